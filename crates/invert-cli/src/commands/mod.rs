pub mod embedding;
pub mod generate;
pub mod model;
pub mod train;
