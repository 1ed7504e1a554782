pub mod embedding;
pub mod model;
