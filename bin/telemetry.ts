/**
 * The standalone server's OpenTelemetry SDK (a host that mounts the plugin brings its own): a meter provider with a
 * Prometheus reader served at /metrics and, with `telemetry.otlpUrl`, OTLP/HTTP export of metrics and traces; and
 * @fastify/otel for request and WebSocket-upgrade spans. Installed before the plugin so its instruments bind to it.
 */
import type { FastifyInstance } from 'fastify'
import { metrics, trace } from '@opentelemetry/api'
import { MeterProvider, PeriodicExportingMetricReader, type MetricReader } from '@opentelemetry/sdk-metrics'
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus'
import { OTLPMetricExporter } from '@opentelemetry/exporter-metrics-otlp-http'
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http'
import { BatchSpanProcessor, NodeTracerProvider } from '@opentelemetry/sdk-trace-node'
import { resourceFromAttributes } from '@opentelemetry/resources'
import { FastifyOtelInstrumentation } from '@fastify/otel'
import type { ResolvedOptions } from '../lib/options.js'
import { packageVersion } from '../lib/paths.js'

export interface TelemetrySdk {
  /** registers /metrics (when Prometheus is on) and request tracing on the app */
  attach(app: FastifyInstance): Promise<void>
  shutdown(): Promise<void>
}

export function startTelemetry (options: ResolvedOptions['telemetry']): TelemetrySdk | null {
  if (!options.prometheus && options.otlpUrl === null) return null
  const resource = resourceFromAttributes({ 'service.name': process.env.OTEL_SERVICE_NAME ?? 'changefeed', 'service.version': packageVersion })
  const readers: MetricReader[] = []
  const prometheus = options.prometheus ? new PrometheusExporter({ preventServerStart: true }) : null
  if (prometheus !== null) readers.push(prometheus)
  let tracing: NodeTracerProvider | null = null
  if (options.otlpUrl !== null) {
    const base = options.otlpUrl.replace(/\/$/, '')
    readers.push(new PeriodicExportingMetricReader({ exporter: new OTLPMetricExporter({ url: `${base}/v1/metrics` }), exportIntervalMillis: 15_000 }))
    tracing = new NodeTracerProvider({ resource, spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter({ url: `${base}/v1/traces` }))] })
    trace.setGlobalTracerProvider(tracing)
  }
  const meterProvider = new MeterProvider({ resource, readers })
  metrics.setGlobalMeterProvider(meterProvider)

  return {
    async attach (app) {
      if (tracing !== null) {
        const instrumentation = new FastifyOtelInstrumentation({ registerOnInitialization: false })
        instrumentation.setTracerProvider(tracing)
        await app.register(instrumentation.plugin())
      }
      if (prometheus !== null) {
        app.get('/metrics', { config: { otel: false } }, (request, reply) => {
          reply.hijack()
          prometheus.getMetricsRequestHandler(request.raw, reply.raw)
        })
      }
    },
    async shutdown () {
      await meterProvider.shutdown().catch(() => {})
      await tracing?.shutdown().catch(() => {})
    }
  }
}
