/**
 * Observability of the mounted plugin: a host that installed its own OpenTelemetry SDK reads the plugin's metrics
 * from its own reader, with the counts of what happened in its process.
 */
import t from 'tap'
import { metrics } from '@opentelemetry/api'
import { AggregationTemporality, MeterProvider, MetricReader, type DataPoint, type Histogram, type MetricData } from '@opentelemetry/sdk-metrics'
import { freshDatabase, martenTableSql, sqlClient } from '../helpers/services.js'
import { startApp } from '../helpers/app.js'
import { isNotification } from '../helpers/client.js'
import { until } from '../helpers/wait.js'

/** A reader the test collects from when it wants (a host would export on a period) */
class HostReader extends MetricReader {
  constructor () { super({ aggregationTemporalitySelector: () => AggregationTemporality.CUMULATIVE }) }
  protected async onForceFlush (): Promise<void> {}
  protected async onShutdown (): Promise<void> {}
}

const reader = new HostReader()
const provider = new MeterProvider({ readers: [reader] })
metrics.setGlobalMeterProvider(provider)
t.teardown(async () => {
  await provider.shutdown()
  metrics.disable()
})

const url = await freshDatabase(t, 'telemetry_host')
const sql = await sqlClient(t, url)
await sql.query(martenTableSql('mt_doc_team'))
const { client } = await startApp(t, { databases: [{ name: 'ballr', url }], entities: { Team: { access: 'public', payload: 'full' } } })

async function collected (): Promise<Map<string, MetricData>> {
  const { resourceMetrics, errors } = await reader.collect()
  if (errors.length > 0) throw new AggregateError(errors, 'the collection raised')
  const byName = new Map<string, MetricData>()
  for (const scope of resourceMetrics.scopeMetrics) {
    if (scope.scope.name !== 'fastify-changefeed') continue
    for (const metric of scope.metrics) byName.set(metric.descriptor.name, metric)
  }
  return byName
}

/** the value of the data point whose attributes include `attributes` */
function valueOf (all: Map<string, MetricData>, name: string, attributes: Record<string, string> = {}): unknown {
  const points = (all.get(name)?.dataPoints ?? []) as Array<DataPoint<unknown>>
  const point = points.find((p) => Object.entries(attributes).every(([k, v]) => p.attributes[k] === v))
  return point?.value
}

t.test('the host reader sees connections, subscriptions, changes, frames and their latency', async (t) => {
  const before = await collected()
  t.equal(valueOf(before, 'changefeed.connections.active'), 0, 'no connection yet')

  const ws = await client()
  await ws.subscribe('Team', 'team-1')
  await sql.query('INSERT INTO mt_doc_team (id, data) VALUES ($1, $2)', ['team-1', '{"name":"Sharks"}'])
  t.equal((await ws.next(isNotification('Team', 'team-1'))).data.changeType, 'created')

  const after = await collected()
  t.equal(valueOf(after, 'changefeed.connections.opened'), 1)
  t.equal(valueOf(after, 'changefeed.connections.active'), 1)
  t.equal(valueOf(after, 'changefeed.subscriptions.created', { 'changefeed.entity_type': 'Team' }), 1)
  t.equal(valueOf(after, 'changefeed.subscriptions.active', { 'changefeed.entity_type': 'Team' }), 1)
  t.equal(valueOf(after, 'changefeed.notifications.sent', { 'changefeed.payload_type': 'full' }), 1)
  t.equal(valueOf(after, 'changefeed.changes', { 'changefeed.outcome': 'published' }), 1)
  t.equal(valueOf(after, 'changefeed.document.reads'), 0, 'the payload came in the notification, not from a read')
  t.equal(valueOf(after, 'changefeed.leader.changes', { 'db.namespace': 'ballr' }), 1, 'this instance listens to its database')
  t.equal(valueOf(after, 'changefeed.bus.errors'), 0)
  const latency = valueOf(after, 'changefeed.notification.latency') as Histogram | undefined
  t.equal(latency?.count, 1, 'one latency sample: one notification on this instance')
  t.ok((latency?.sum ?? -1) >= 0 && (latency?.sum ?? Infinity) < 60, 'the sample is seconds since the change')
  t.type(valueOf(after, 'nodejs.eventloop.delay.p99'), 'number')

  ws.close()
  let now = after
  t.ok(await until(async () => { now = await collected(); return valueOf(now, 'changefeed.connections.active') === 0 }), 'the close is seen')
  const closes = (all: Map<string, MetricData>): number => ((all.get('changefeed.connections.closed')?.dataPoints ?? []) as Array<DataPoint<number>>).reduce((n, p) => n + p.value, 0)
  t.equal(closes(now), 1, 'one close, counted by its code')
  t.equal(valueOf(now, 'changefeed.subscriptions.removed', { 'changefeed.entity_type': 'Team' }), 1)
  const held = valueOf(now, 'changefeed.connection.subscriptions') as Histogram | undefined
  t.equal(held?.count, 1, 'the closed connection is sampled once')
  t.equal(held?.sum, 1, 'with the one subscription it held')
})
