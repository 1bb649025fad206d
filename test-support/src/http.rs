//! `GET` for tests, bounded by [`STEP`]: [`strata_common::http::get`] (hyper's HTTP/1.1 client,
//! the body capped) with the body as text.

use std::fmt::Display;

use anyhow::{Context as _, Result};

use crate::STEP;

/// An answer: status, headers and the body as text.
#[derive(Debug)]
pub struct Page {
    /// The HTTP status code.
    pub status: u16,
    /// The headers.
    pub headers: hyper::HeaderMap,
    /// The body, which must be UTF-8.
    pub body: String,
}

impl Page {
    /// The value of header `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}

/// `GET path` on `addr` (`HOST:PORT`), the whole answer within [`STEP`].
pub async fn get(addr: impl Display, path: &str) -> Result<Page> {
    let url = format!("http://{addr}{path}");
    let response = strata_common::http::get(&url, STEP)
        .await
        .with_context(|| format!("GET {path} on {addr}"))?;
    Ok(Page {
        status: response.status,
        headers: response.headers,
        body: String::from_utf8(response.body)
            .with_context(|| format!("GET {path} on {addr}: a body that is not UTF-8"))?,
    })
}
