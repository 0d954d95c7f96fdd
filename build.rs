//! Build script: compresses the web console's files (`ui/`) with gzip and
//! writes `$OUT_DIR/ui_assets.rs`, the table `src/http/ui.rs` serves: each
//! file's URL path, content type, ETag (a hash of its bytes) and both its
//! plain and gzipped bytes (`include_bytes!`). No npm, nothing fetched.

use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;

/// The console's files: (file under `ui/`, content type).
const FILES: [(&str, &str); 3] = [
    ("index.html", "text/html; charset=utf-8"),
    ("app.js", "text/javascript; charset=utf-8"),
    ("app.css", "text/css; charset=utf-8"),
];

fn main() {
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let mut table = String::from("&[\n");
    for (name, content_type) in FILES {
        let source = Path::new("ui").join(name);
        println!("cargo:rerun-if-changed={}", source.display());
        let plain = std::fs::read(&source)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", source.display()));
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        encoder.write_all(&plain).expect("gzip in memory");
        let gzipped = encoder.finish().expect("gzip in memory");
        let gz_path = Path::new(&out_dir).join(format!("{name}.gz"));
        std::fs::write(&gz_path, &gzipped).expect("write to OUT_DIR");
        let plain_path = std::fs::canonicalize(&source).expect("the source exists");
        table.push_str(&format!(
            "    Asset {{ name: {name:?}, content_type: {content_type:?}, etag: \"\\\"{:016x}\\\"\", \
             plain: include_bytes!({plain_path:?}), gzipped: include_bytes!({gz_path:?}) }},\n",
            fnv1a(&plain),
        ));
    }
    table.push(']');
    std::fs::write(Path::new(&out_dir).join("ui_assets.rs"), table).expect("write to OUT_DIR");
}

/// 64-bit FNV-1a: a stable fingerprint of a file for its ETag.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
