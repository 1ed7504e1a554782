//! The bundled world: a procedural picture world with exact captions (`world`), the base model
//! pretrained on it from scratch (`pretrain`), and the oracle that reads its pictures' attributes
//! back (`oracle`), so that textual inversion can be run and judged end to end without any
//! downloaded model.

pub mod oracle;
pub mod pretrain;
pub mod world;
