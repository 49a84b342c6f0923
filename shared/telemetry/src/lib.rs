//! Logs and traces for every berth binary.
//!
//! `init` installs a `tracing` subscriber writing logs to stderr (filtered by `RUST_LOG`,
//! `info` by default) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-specific
//! variable) is set, an OpenTelemetry layer exporting spans over OTLP/gRPC. W3C trace
//! context travels in gRPC metadata (`traceparent`), so one user command is one trace
//! across the gateway and every service: servers call [`context::server_span`], clients
//! wrap their channels with [`context::Propagate`].

pub mod context;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Flushes spans still buffered for export when dropped; keep it alive for the process' life.
#[must_use = "dropping the guard stops trace export"]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

fn otlp_configured() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
}

/// Sets up logging (and tracing export when configured) for the binary `service_name`.
///
/// Must be called from within a tokio runtime when OTLP export is configured.
pub fn init(service_name: &str) -> Guard {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(ansi);

    let provider = if otlp_configured() {
        match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(Resource::builder().with_service_name(service_name.to_string()).build())
                    .build(),
            ),
            Err(err) => {
                eprintln!("{service_name}: OTLP trace export disabled: {err}");
                None
            }
        }
    } else {
        None
    };

    let otel =
        provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service_name.to_string())));
    // A second init (tests starting several services in one process) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init();
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    Guard { provider }
}
