//! Configuration: Olla's YAML schema plus our additions ([`schema`]), Go-style durations
//! ([`duration`]), file lookup, `${VAR}` interpolation and parse errors with key paths
//! ([`load`]), and validation into runtime settings and backend specs ([`resolve`]).

pub mod admin;
pub mod diff;
pub mod duration;
pub mod inert;
pub mod load;
pub mod resolve;
pub mod schema;

pub use load::{load_file, locate, parse, Source};
pub use resolve::{resolve, AnthropicSettings, Runtime, ServerSettings};
pub use schema::Config;

/// The annotated example config (`config/config.yaml`), as `olla config example` prints it.
pub const EXAMPLE: &str = include_str!("../../config/config.yaml");

/// The JSON Schema of the config file, generated from the config types (serde renames,
/// defaults and `deny_unknown_fields` included), for editors and CI validation.
pub fn json_schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(Config);
    schema.insert("title".into(), "olla configuration".into());
    schema.to_value()
}

/// Loads the config from its source (defaults when there is no file) and resolves it.
pub fn load(explicit: Option<&std::path::Path>) -> Result<(Source, Config, Runtime), Vec<String>> {
    let source = locate(explicit).map_err(|e| vec![e])?;
    let config = match &source {
        Source::File(p) => load_file(p).map_err(|e| vec![e])?,
        Source::Defaults => parse("", &|k| std::env::var(k).ok()).map_err(|e| vec![e])?,
    };
    let runtime = resolve(&config)?;
    Ok((source, config, runtime))
}
