/**
 * The standalone server's OpenTelemetry SDK (a host that mounts the plugin brings its own): a meter provider with a
 * Prometheus reader served at /metrics (for admins unless the config makes it public) and, with
 * `telemetry.otlpUrl`, OTLP/HTTP export of metrics and traces; and @fastify/otel for request and WebSocket-upgrade
 * spans, their URL redacted as in the logs. Installed before the plugin so its instruments bind to it. The SDK
 * packages are optional peer dependencies, imported only when telemetry is turned on.
 */
import type { FastifyInstance, FastifyPluginCallback } from 'fastify'
import { metrics, trace } from '@opentelemetry/api'
import type { MetricReader } from '@opentelemetry/sdk-metrics'
import type { NodeTracerProvider } from '@opentelemetry/sdk-trace-node'
import { prometheusOf, type ResolvedOptions } from '../lib/options.js'
import { redactUrl } from '../lib/auth/redact.js'
import { packageVersion } from '../lib/package.js'
import { requirePackages } from '../lib/package.js'

/** The packages each setting needs, beyond @opentelemetry/api (a dependency of the plugin). */
export const TELEMETRY_PACKAGES = {
  prometheus: ['@opentelemetry/sdk-metrics', '@opentelemetry/resources', '@opentelemetry/exporter-prometheus'],
  otlpUrl: ['@opentelemetry/sdk-metrics', '@opentelemetry/resources', '@opentelemetry/exporter-metrics-otlp-http',
    '@opentelemetry/exporter-trace-otlp-http', '@opentelemetry/sdk-trace-node', '@fastify/otel']
}

export interface TelemetrySdk {
  /** registers request tracing on the app: before the plugin, so that its routes are traced */
  attach(app: FastifyInstance): Promise<void>
  /** registers /metrics when Prometheus is on: after the plugin, whose admin check guards it */
  serveMetrics(app: FastifyInstance): void
  shutdown(): Promise<void>
}

/** Null when telemetry is off. CHANGEFEED_MISSING_PACKAGE when a package the settings need is not installed. */
export async function startTelemetry (options: ResolvedOptions['telemetry']): Promise<TelemetrySdk | null> {
  const metricsRoute = prometheusOf(options)
  const wanted = (['prometheus', 'otlpUrl'] as const).filter((setting) => setting === 'prometheus' ? metricsRoute.enabled : options.otlpUrl !== null)
  if (wanted.length === 0) return null
  requirePackages(wanted.map((setting) => `telemetry.${setting}`).join(' and '), [...new Set(wanted.flatMap((setting) => TELEMETRY_PACKAGES[setting]))])

  const { MeterProvider, PeriodicExportingMetricReader } = await import('@opentelemetry/sdk-metrics')
  const { resourceFromAttributes } = await import('@opentelemetry/resources')
  const resource = resourceFromAttributes({ 'service.name': process.env.OTEL_SERVICE_NAME ?? 'changefeed', 'service.version': packageVersion })
  const readers: MetricReader[] = []
  const prometheus = metricsRoute.enabled ? new (await import('@opentelemetry/exporter-prometheus')).PrometheusExporter({ preventServerStart: true }) : null
  if (prometheus !== null) readers.push(prometheus)
  let tracing: NodeTracerProvider | null = null
  let requestTracing: FastifyPluginCallback | null = null
  if (options.otlpUrl !== null) {
    const base = options.otlpUrl.replace(/\/$/, '')
    const { OTLPMetricExporter } = await import('@opentelemetry/exporter-metrics-otlp-http')
    const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-http')
    const { BatchSpanProcessor, NodeTracerProvider } = await import('@opentelemetry/sdk-trace-node')
    const { FastifyOtelInstrumentation } = await import('@fastify/otel')
    readers.push(new PeriodicExportingMetricReader({ exporter: new OTLPMetricExporter({ url: `${base}/v1/metrics` }), exportIntervalMillis: 15_000 }))
    tracing = new NodeTracerProvider({ resource, spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter({ url: `${base}/v1/traces` }))] })
    trace.setGlobalTracerProvider(tracing)
    // a span's url.path is the URL with its query: a browser's ?token= must not reach the collector
    const instrumentation = new FastifyOtelInstrumentation({
      registerOnInitialization: false,
      requestHook: (span, request) => { span.setAttribute('url.path', redactUrl(request.url)) }
    })
    instrumentation.setTracerProvider(tracing)
    requestTracing = instrumentation.plugin()
  }
  const meterProvider = new MeterProvider({ resource, readers })
  metrics.setGlobalMeterProvider(meterProvider)

  return {
    async attach (app) {
      if (requestTracing !== null) await app.register(requestTracing)
    },
    serveMetrics (app) {
      if (prometheus === null) return
      const { auth } = app.changefeed.options
      if (!metricsRoute.public && auth.jwt === undefined && (auth.basic?.accounts.length ?? 0) === 0) {
        app.log.warn('changefeed: /metrics is for admin credentials, and no auth.jwt or auth.basic account is configured: nothing can scrape it (set telemetry.prometheus to { "public": true } on a network only Prometheus reaches)')
      }
      app.get('/metrics', { config: { otel: false } }, async (request, reply) => {
        if (!metricsRoute.public && !await app.changefeed.requireAdmin(request, reply)) return reply
        reply.hijack()
        prometheus.getMetricsRequestHandler(request.raw, reply.raw)
      })
    },
    async shutdown () {
      await meterProvider.shutdown().catch(() => {})
      await tracing?.shutdown().catch(() => {})
    }
  }
}
