//! The progress of a pull as the Transfer stream reports it. Sending never waits and never
//! fails the pull: a client that went away stops receiving, and the pull goes on.

use std::time::{Duration, Instant};

use berth_api::berth::image::v1::{BlobProgress, BlobState, LayerProgress, PullProgress, Resolved, pull_progress};
use berth_api::containerd::services::images::v1::Image;
use tokio::sync::mpsc;
use tonic::Status;

use crate::manifest::Descriptor;

/// How often a download reports its byte count.
const BYTES_EVERY: Duration = Duration::from_millis(100);

pub type Event = Result<PullProgress, Status>;

#[derive(Clone, Debug, Default)]
pub struct Progress {
    events: Option<mpsc::UnboundedSender<Event>>,
}

impl Progress {
    pub fn new(events: mpsc::UnboundedSender<Event>) -> Progress {
        Progress { events: Some(events) }
    }

    /// Reports nothing (pulls nobody watches).
    pub fn silent() -> Progress {
        Progress::default()
    }

    fn send(&self, event: pull_progress::Event) {
        if let Some(events) = &self.events {
            let _ = events.send(Ok(PullProgress { event: Some(event) }));
        }
    }

    pub fn resolved(&self, name: &str, root: &Descriptor) {
        self.send(pull_progress::Event::Resolved(Resolved {
            name: name.to_string(),
            digest: root.digest.clone(),
            media_type: root.media_type.clone(),
            size: root.size,
        }));
    }

    pub fn blob(&self, descriptor: &Descriptor, state: BlobState, offset: i64, resumed_from: i64) {
        self.send(pull_progress::Event::Blob(BlobProgress {
            digest: descriptor.digest.clone(),
            media_type: descriptor.media_type.clone(),
            state: state as i32,
            offset,
            total: descriptor.size,
            resumed_from,
        }));
    }

    pub fn layer(&self, layer: LayerProgress) {
        self.send(pull_progress::Event::Layer(layer));
    }

    pub fn image(&self, image: &Image) {
        self.send(pull_progress::Event::Image(image.clone()));
    }
}

/// Byte counts of one download, reported at most every [`BYTES_EVERY`].
pub struct Bytes<'a> {
    progress: &'a Progress,
    descriptor: &'a Descriptor,
    resumed_from: i64,
    last: Instant,
}

impl<'a> Bytes<'a> {
    pub fn start(progress: &'a Progress, descriptor: &'a Descriptor, resumed_from: u64) -> Bytes<'a> {
        let resumed_from = i64::try_from(resumed_from).unwrap_or(i64::MAX);
        progress.blob(descriptor, BlobState::Downloading, resumed_from, resumed_from);
        Bytes { progress, descriptor, resumed_from, last: Instant::now() }
    }

    pub fn at(&mut self, offset: u64) {
        if self.last.elapsed() >= BYTES_EVERY {
            self.last = Instant::now();
            let offset = i64::try_from(offset).unwrap_or(i64::MAX);
            self.progress.blob(self.descriptor, BlobState::Downloading, offset, self.resumed_from);
        }
    }
}
