pub mod device;
pub mod embedding;
pub mod eval;
pub mod generate;
pub mod model;
pub mod pretrain;
pub mod train;
pub mod world;
