//! Evaluation of learned words on the paper's two axes (Gal et al. 2022, section 5.1 and
//! Figure 10): reconstruction and editability. On the bundled world the judge is its oracle
//! (`oracle_protocol`); `plot` draws the Figure-10 scatter and `report` writes the tables.

pub mod clip_metrics;
pub mod clip_scorer;
mod font;
mod oracle_protocol;
pub mod paper_experiment;
pub mod paper_report;
pub mod plot;
pub mod report;

pub use oracle_protocol::*;
