//! OpenTelemetry trace export over OTLP/HTTP (protobuf), built with the
//! `otlp` feature.
//!
//! Enabled at run time by the standard variables:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (the collector's base URL, `/v1/traces`
//! appended) or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full URL), and
//! `OTEL_SERVICE_NAME` (default `corral`). Spans are Corral's own (targets
//! `corral*` at debug and above): the worker's `task` span (task id,
//! tenant, job, attempt) around its broker calls and the sandbox's
//! `handler` spans. They are batched and sent from a background thread, so
//! a collector that is slow or away never stalls a task; spans that do not
//! fit the batch queue are dropped. Names and ids in them are the ones the
//! logs carry (inert). This module never decides what is traced, only
//! where spans go.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;

use super::TracingGuard;

/// The provider spans go through while the process runs.
pub(super) struct Exporting(SdkTracerProvider);

impl Drop for Exporting {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("corral: trace export did not flush: {e}");
        }
    }
}

type Boxed = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// The export layer (none when no endpoint is configured, or the exporter
/// cannot be built: then a warning, and Corral runs without it).
pub(super) fn layer() -> (Option<Boxed>, TracingGuard) {
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
    if !configured {
        return (None, TracingGuard::default());
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
    {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("corral: OTLP export is off: {e}");
            return (None, TracingGuard::default());
        }
    };
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "corral".to_owned());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    let tracer = provider.tracer("corral");
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("corral", tracing::Level::DEBUG)
        .with_target("corral_worker", tracing::Level::DEBUG)
        .with_target("corral_sandbox", tracing::Level::DEBUG)
        .with_target("corral_client", tracing::Level::DEBUG)
        .with_target("corral_api", tracing::Level::DEBUG);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(filter)
        .boxed();
    (
        Some(layer),
        TracingGuard {
            _otlp: Some(Exporting(provider)),
        },
    )
}
