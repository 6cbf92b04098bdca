//! The dashboard's static files, embedded at compile time (`include_bytes!`; hand-written HTML,
//! CSS and JavaScript, no build step), with their content types, strong ETags (a hash of the
//! bytes, computed once) and cache rules: the index `no-cache`, the rest an hour.

use std::sync::OnceLock;

/// One embedded file.
pub struct Asset {
    pub name: &'static str,
    pub bytes: &'static [u8],
    pub content_type: &'static str,
    etag: OnceLock<String>,
}

impl Asset {
    const fn new(name: &'static str, bytes: &'static [u8], content_type: &'static str) -> Self {
        Self {
            name,
            bytes,
            content_type,
            etag: OnceLock::new(),
        }
    }

    /// Strong ETag: FNV-1a 64 of the bytes and their length.
    pub fn etag(&self) -> &str {
        self.etag.get_or_init(|| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in self.bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            format!("\"{h:016x}-{:x}\"", self.bytes.len())
        })
    }

    /// Olla's rule: the index revalidates every time; other files (not content-hashed) an hour.
    pub fn cache_control(&self) -> &'static str {
        if self.name == INDEX {
            "no-cache"
        } else {
            "max-age=3600"
        }
    }
}

const INDEX: &str = "index.html";

static ASSETS: [Asset; 4] = [
    Asset::new(
        INDEX,
        include_bytes!("assets/index.html"),
        "text/html; charset=utf-8",
    ),
    Asset::new(
        "app.js",
        include_bytes!("assets/app.js"),
        "text/javascript; charset=utf-8",
    ),
    Asset::new(
        "app.css",
        include_bytes!("assets/app.css"),
        "text/css; charset=utf-8",
    ),
    Asset::new(
        "favicon.svg",
        include_bytes!("assets/favicon.svg"),
        "image/svg+xml",
    ),
];

/// The asset for a path under the dashboard's base (`rest` starts with `/`). A path whose last
/// segment has no extension is a page of the app and gets the index; otherwise the last
/// segment names the file (the page links its files relatively, so they resolve from any
/// page path); a missing file is `None`.
pub fn lookup(rest: &str) -> Option<&'static Asset> {
    let last = rest.rsplit('/').next().unwrap_or("");
    if !last.contains('.') {
        return ASSETS.iter().find(|a| a.name == INDEX);
    }
    ASSETS.iter().find(|a| a.name == last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_files_or_the_index() {
        assert_eq!(lookup("/").map(|a| a.name), Some(INDEX));
        assert_eq!(lookup("/index.html").map(|a| a.name), Some(INDEX));
        assert_eq!(lookup("/endpoints").map(|a| a.name), Some(INDEX));
        assert_eq!(lookup("/app.js").map(|a| a.name), Some("app.js"));
        assert!(lookup("/missing.js").is_none());
        assert!(lookup("/../Cargo.toml").is_none());
        assert_eq!(lookup("/a/b/app.css").map(|a| a.name), Some("app.css"));
    }

    #[test]
    fn etags_are_strong_stable_and_distinct() {
        let a = lookup("/app.js").unwrap();
        let i = lookup("/").unwrap();
        assert!(a.etag().starts_with('"') && !a.etag().starts_with("W/"));
        assert_eq!(a.etag(), a.etag());
        assert_ne!(a.etag(), i.etag());
        assert_eq!(i.cache_control(), "no-cache");
        assert_eq!(a.cache_control(), "max-age=3600");
    }

    #[test]
    fn the_page_has_no_inline_script_and_loads_its_files() {
        let html = std::str::from_utf8(lookup("/").unwrap().bytes).unwrap();
        assert!(html.contains("<script src=\"app.js\""));
        assert!(
            !html.contains("<script>"),
            "CSP script-src 'self' forbids inline scripts"
        );
        assert!(!html.contains("onclick="), "no inline handlers");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "no CDN"
        );
    }
}
