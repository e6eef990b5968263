//! Built without the `models` feature: no in-process models. A server
//! configured with one refuses to start, saying how to get them.

use bytes::Bytes;
use std::sync::Arc;
use tidepool_core::config::Config;
use tidepool_core::server::calls::CallId;

#[derive(Debug)]
pub enum Models {}

impl Models {
    pub fn start(&self, _host: Arc<crate::shared::Host>, _id: CallId, _request: Bytes) {
        match *self {}
    }

    pub fn cancel(&self, _id: CallId) {
        match *self {}
    }
}

#[derive(Default)]
pub struct Loaded {
    pub models: Option<Arc<Models>>,
    pub banner: Vec<String>,
}

/// Called only when a model is configured.
pub fn load(_config: &Config) -> Result<Loaded, String> {
    Err(
        "this tidepool was built without the `models` cargo feature; \
         build it with `--features models` to use --embed-model-dir or --chat-model-file"
            .into(),
    )
}
