//! Configuration: YAML file -> validated [`Config`] (SPEC §5).

mod types;

pub use types::*;
