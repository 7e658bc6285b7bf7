//! `shopctl schema export DIR`: one JSON Schema file per catalogue message
//! (`<EventType>.json`, the envelope around the payload schema), byte for byte
//! what the events crate commits under `events/schemas/`, so producers in any
//! language can validate before they publish.

use std::path::Path;

use anyhow::{Context, Result};
use events::Message;

use crate::say;

/// (file name, content) of every schema.
pub fn files() -> Result<Vec<(String, String)>> {
    Message::payload_schemas()
        .into_iter()
        .map(|(spec, payload)| {
            let schema = events::envelope_schema(spec, &payload);
            let text = serde_json::to_string_pretty(&schema).context("formatting a schema")? + "\n";
            Ok((format!("{}.json", spec.event_type), text))
        })
        .collect()
}

pub fn export(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let files = files()?;
    for (name, text) in &files {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    say!("wrote {} schemas to {}", files.len(), dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The export is what the events crate commits.
    #[test]
    fn matches_the_committed_schemas() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/schemas");
        for (name, text) in super::files().expect("schemas") {
            let committed = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
            assert_eq!(committed, text, "{name} differs from events/schemas");
        }
    }
}
