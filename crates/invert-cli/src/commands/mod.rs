pub mod embedding;
pub mod generate;
pub mod model;
