/**
 * Abuse resistance with the default limits: a burst of 10,000 subscribe frames, the 101st subscription, a 1 MiB
 * frame, 1,000 connections of one user, a client that stops reading while a full entity changes 10,000 times
 * (conflated), and one that falls behind on many entities (closed).
 */
import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { packageRoot } from '../../../lib/package.js'
import { startApp } from '../../helpers/app.js'
import { TestClient } from '../../helpers/client.js'
import { now, signHs256 } from '../../helpers/tokens.js'
import { verifyPassword } from '../../../lib/auth/passwords.js'
import { WireError } from '../../../lib/errors.js'
import { until } from '../../helpers/wait.js'

const SECRET = 'limits-test-secret-0123456789abcdef'
const entities = { Team: { access: 'public' as const }, RugbyGameState: { access: 'public' as const, payload: 'full' as const } }

t.test('10,000 subscribe frames in a burst: the limits hold, then the socket is closed with 1008', async (t) => {
  const { app, client } = await startApp(t, { entities })
  const flood = await client()
  const bystander = await client()
  for (let i = 0; i < 10_000; i++) flood.send({ type: 'subscribe', id: i, data: { entityType: 'Team', entityId: `t-${i}` } })
  t.equal((await flood.closed).code, 1008)
  const subscribed = flood.messages.filter((m) => m.type === 'subscribed').length
  t.ok(subscribed <= 100, `no more than maxSubscriptionsPerConnection (${subscribed})`)
  t.ok(flood.messages.some((m) => m.type === 'error' && m.data.code === WireError.rateLimited), 'the excess was rate limited')
  t.ok(flood.messages.length < 400, `replies stop at the abuse limit (${flood.messages.length})`)
  t.ok(await until(() => app.changefeed.stats().subscriptions.active === 0), 'its subscriptions are gone')
  t.equal((await bystander.subscribe('Team', 'fine')).type, 'subscribed', 'others are unaffected')
})

t.test('the 101st subscription is refused with too_many_subscriptions', async (t) => {
  const { client } = await startApp(t, { entities })
  const ws = await client()
  for (let i = 0; i < 100; i++) ws.send({ type: 'subscribe', id: i, data: { entityType: 'Team', entityId: `t-${i}` } })
  await ws.next((m) => m.id === 99)
  t.equal(ws.messages.filter((m) => m.type === 'subscribed').length, 99)
  t.match(await ws.subscribe('Team', 't-100'), { type: 'subscription_error', data: { code: WireError.tooManySubscriptions } })
})

t.test('a 1 MiB frame closes with 1009', async (t) => {
  const { client } = await startApp(t, { entities })
  const ws = await client()
  ws.send('x'.repeat(1024 * 1024))
  t.equal((await ws.closed).code, 1009)
})

t.test('1,000 connections of one user: maxConnectionsPerUser, then 4429', async (t) => {
  const { app, url } = await startApp(t, { entities, auth: { jwt: { secret: SECRET } } })
  const token = signHs256({ sub: 'greedy', exp: now() + 600 }, SECRET)
  const sockets: TestClient[] = []
  t.teardown(() => { for (const s of sockets) s.close() })
  for (let batch = 0; batch < 10; batch++) {
    sockets.push(...await Promise.all(Array.from({ length: 100 }, async () => await TestClient.open(`${url}?token=${token}`))))
  }
  // the server admits or refuses a socket as it connects: the refused ones close; then each one left answers a
  // ping, which a socket the server closed would not
  const outcomes = new Map<TestClient, number | 'open'>()
  for (const s of sockets) void s.closed.then((c) => { if (!outcomes.has(s)) outcomes.set(s, c.code) })
  t.ok(await until(() => outcomes.size >= 980, 10_000), 'the refused sockets close')
  await Promise.all(sockets.filter((s) => !outcomes.has(s)).map(async (s) => {
    s.send({ type: 'ping' })
    outcomes.set(s, await Promise.race([s.closed.then((c) => c.code), s.next((m) => m.type === 'pong').then(() => 'open' as const)]))
  }))
  const codes = [...outcomes.values()]
  t.equal(codes.filter((c) => c === 'open').length, 20, 'maxConnectionsPerUser (20) stay open')
  t.equal(codes.filter((c) => c === 4429).length, 980, 'the rest are closed with 4429')
  t.equal(app.changefeed.stats().connections.active, 20)
  const other = await TestClient.open(`${url}?token=${signHs256({ sub: 'someone-else', exp: now() + 600 }, SECRET)}`)
  sockets.push(other)
  t.equal((await other.subscribe('Team', 'x')).type, 'subscribed', 'another user is not affected')
})

t.test('a client that stops reading gets the latest state, not every one; memory stays bounded; others keep receiving', async (t) => {
  const { app, client } = await startApp(t, { entities })
  const slow = await client()
  // the reading client keeps nothing it receives, so the heap measures the server, not the test's own queues
  const fast = await client()
  await slow.subscribe('RugbyGameState', 'match-1')
  await fast.subscribe('RugbyGameState', 'match-1')
  fast.ws.removeAllListeners('message')
  const slowSocket = (slow.ws as unknown as { _socket: { pause(): void, resume(): void } })._socket
  slowSocket.pause()
  const commentary = 'c'.repeat(2000)
  let received = 0
  let last = -1
  let inOrder = true
  fast.ws.on('message', (data) => {
    const seq = JSON.parse(data.toString()).data?.payload?.seq
    if (typeof seq !== 'number') return
    if (seq !== last + 1) inOrder = false
    last = seq
    received++
  })
  // what stays, not what the collector has not come to yet: a full collection before each measure
  setFlagsFromString('--expose-gc')
  const collect = runInNewContext('gc') as () => void
  collect()
  const heapBefore = process.memoryUsage().heapUsed
  for (let seq = 0; seq < 10_000; seq++) {
    await app.changefeed.publish({ entityType: 'RugbyGameState', entityId: 'match-1', changeType: 'updated', payload: { seq, commentary } })
    if (seq % 100 === 99) await sleep(5) // let the readers' sockets drain, as a real change stream would
  }
  t.ok(await until(() => received >= 10_000, 30_000), 'the reading client got every change')
  t.equal(received, 10_000)
  t.ok(inOrder, 'in order')
  collect()
  const growthMiB = (process.memoryUsage().heapUsed - heapBefore) / 2 ** 20
  t.ok(growthMiB < 64, `heap growth stays bounded (${growthMiB.toFixed(1)} MiB for ~20 MiB of frames)`)
  const stats = app.changefeed.stats().connections
  t.equal(stats.slowConsumerCloses, 0, 'one entity conflates: the slow reader is not closed')
  t.ok(stats.conflated > 1000, `intermediate states were dropped for it (${stats.conflated})`)

  slowSocket.resume()
  const latest = await slow.next((m) => m.type === 'notification' && m.data.payload.seq === 9999, 15_000)
  t.equal(latest.data.payload.seq, 9999, 'once it reads again it gets the latest state')
  const seqs = slow.messages.filter((m) => m.type === 'notification').map((m) => m.data.payload.seq as number)
  t.ok(seqs.length < 9000, `not every intermediate one (${seqs.length + 1} of 10,000)`)
  t.same(seqs, [...seqs].sort((a, b) => a - b), 'what it got is in order')
  await app.changefeed.publish({ entityType: 'RugbyGameState', entityId: 'match-1', changeType: 'updated', payload: { seq: 10_000 } })
  t.ok(await until(() => received === 10_001), 'and the reading client goes on receiving')
})

t.test('a client that falls behind on more than it may hold is closed with 4409', async (t) => {
  const { app, client } = await startApp(t, { entities, limits: { conflateAboveBytes: 0, maxHeldFrames: 20 } })
  const slow = await client()
  const fast = await client()
  for (let i = 0; i < 50; i++) {
    await slow.subscribe('RugbyGameState', `m-${i}`)
    await fast.subscribe('RugbyGameState', `m-${i}`)
  }
  ;(slow.ws as unknown as { _socket: { pause(): void } })._socket.pause()
  const commentary = 'c'.repeat(20_000)
  for (let round = 0; round < 20 && app.changefeed.stats().connections.slowConsumerCloses === 0; round++) {
    for (let i = 0; i < 50; i++) await app.changefeed.publish({ entityType: 'RugbyGameState', entityId: `m-${i}`, changeType: 'updated', payload: { round, commentary } })
    await sleep(20) // paced like a change stream: the fast reader drains between rounds, the paused one cannot
  }
  t.equal(app.changefeed.stats().connections.slowConsumerCloses, 1, 'the slow consumer was closed')
  t.ok(await until(() => app.changefeed.stats().connections.active === 1, 5000), 'and is gone (terminated after the close grace)')
  t.equal((await fast.subscribe('RugbyGameState', 'm-0', 'again')).type, 'subscribed', 'the other client is fine')
})

t.test('changefeed hash-password prints a scrypt hash that verifies', async (t) => {
  const bin = join(packageRoot, 'bin', 'serve')
  const result = spawnSync(process.execPath, [bin, 'hash-password'], { input: 'p@ss word\n', encoding: 'utf8' })
  t.equal(result.status, 0)
  const hash = result.stdout.trim()
  t.match(hash, /^scrypt\$16384\$8\$1\$[\w-]+\$[\w-]+$/)
  t.ok(await verifyPassword('p@ss word', hash))
  t.notOk(await verifyPassword('p@ss word ', hash))
  t.notOk(await verifyPassword('p@ss word', null), 'no account: false (after the same work)')
})
