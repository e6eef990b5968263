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

pub struct Loaded {
    pub models: Option<Arc<Models>>,
    pub banner: Vec<String>,
}

pub fn load(config: &Config) -> Result<Loaded, String> {
    if config.embed_model_dir.is_empty() && config.chat_model_file.is_empty() {
        return Ok(Loaded {
            models: None,
            banner: Vec::new(),
        });
    }
    Err(
        "this tidepool was built without the `models` cargo feature; \
         build it with `--features models` to use --embed-model-dir or --chat-model-file"
            .into(),
    )
}
