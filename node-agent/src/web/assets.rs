//! The stylesheet and the little script, compiled into the binary (hospital networks are
//! closed: nothing is loaded from elsewhere). Served with a long cache life under a path that
//! carries a digest of their content, so a new build never meets a stale copy.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::LazyLock;

const CSS: &str = include_str!("static/app.css");
const JS: &str = include_str!("static/app.js");

struct Asset {
    name: String,
    body: &'static str,
    content_type: &'static str,
}

fn named(stem: &str, ext: &str, body: &'static str, content_type: &'static str) -> Asset {
    let digest = huren_core::signing::sha256(body.as_bytes());
    Asset {
        name: format!("{stem}-{}.{ext}", hex::encode(&digest[..6])),
        body,
        content_type,
    }
}

static ASSETS: LazyLock<[Asset; 2]> = LazyLock::new(|| {
    [
        named("app", "css", CSS, "text/css; charset=utf-8"),
        named("app", "js", JS, "text/javascript; charset=utf-8"),
    ]
});

/// The stylesheet's address.
pub fn css_path() -> String {
    format!("/static/{}", ASSETS[0].name)
}

/// The script's address.
pub fn js_path() -> String {
    format!("/static/{}", ASSETS[1].name)
}

pub async fn serve(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(a.content_type),
                ),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=31536000, immutable"),
                ),
            ],
            a.body,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
