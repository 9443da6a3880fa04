/**
 * The leader's record of the last transaction it handed on (lib/bus/handoff.ts), on Redis and NATS: none until
 * written, the latest write wins, per database and per prefix; the memory bus keeps none.
 */
import t from 'tap'
import Fastify from 'fastify'
import { randomUUID } from 'node:crypto'
import { openBroker, type Broker } from '../../../lib/bus/index.js'
import { handoffRecordOf } from '../../../lib/bus/handoff.js'
import { resolveOptions } from '../../../lib/options.js'
import { NATS_URL, REDIS_URL, requireService } from '../../helpers/brokers.js'

await requireService('Redis')
await requireService('NATS')

async function brokerOf (t: { teardown(fn: () => unknown): void }, provider: 'memory' | 'redis' | 'nats'): Promise<Broker> {
  const app = Fastify()
  let broker: Broker | undefined
  await app.register(async (scope) => {
    broker = await openBroker(scope, resolveOptions({ bus: { provider, url: provider === 'redis' ? REDIS_URL : provider === 'nats' ? NATS_URL : undefined } }).bus)
  })
  await app.ready()
  t.teardown(async () => { await broker!.close(); await app.close() })
  return broker!
}

for (const provider of ['redis', 'nats'] as const) {
  t.test(`${provider}: the handoff record`, async (t) => {
    const broker = await brokerOf(t, provider)
    const prefix = `ho-${randomUUID().slice(0, 8)}`
    const record = handoffRecordOf(broker, prefix)!
    t.equal(await record.read('main'), null, 'none before the first write')
    await record.write('main', '100')
    await record.write('main', '101')
    await record.write('other', '7')
    t.equal(await record.read('main'), '101', 'the latest')
    t.equal(await record.read('other'), '7', 'per database')
    t.equal(await handoffRecordOf(broker, `${prefix}-b`)!.read('main'), null, 'per prefix')
  })
}

t.test('memory: no record (one process, no takeover)', async (t) => {
  t.equal(handoffRecordOf(await brokerOf(t, 'memory'), 'x'), null)
})
