/**
 * The SDK in a real browser (Debian's Chromium, driven by playwright-core) with the network cut and restored: a page
 * whose client knows two instances on one Redis bus (notify mode, PostgreSQL triggers on a Marten document table)
 * follows an entity and its type's feed; a TCP proxy between the browser and each instance destroys every connection
 * (no close frame) and refuses new ones while the test writes to the database. Back on the network, the page resumes
 * from the bus's history: every change once, in order, no `onResync`, no document read. When the history is lost
 * meanwhile (its Redis keys flushed), or a change nobody watched did not reach it (a document too large for the NOTIFY,
 * which the publisher reads only for a watched entity), the page is told to refetch: never a silent gap.
 */
import t from 'tap'
import { existsSync } from 'node:fs'
import { createServer } from 'node:http'
import { join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { build } from 'esbuild'
import { Redis } from 'ioredis'
import { chromium, type Browser, type Page } from 'playwright-core'
import { packageRoot } from '../../lib/package.js'
import { startApp, type RunningApp } from '../helpers/app.js'
import { REDIS_URL, requireService } from '../helpers/brokers.js'
import { cuttableProxy, type CuttableProxy } from '../helpers/proxy.js'
import { freshDatabase, martenTableSql, sqlClient } from '../helpers/services.js'
import { until } from '../helpers/wait.js'

const CHROMIUM = '/usr/bin/chromium'
if (!existsSync(CHROMIUM)) throw new Error(`Chromium is not installed at ${CHROMIUM}; install it with: apt-get install -y chromium`)
await requireService('Redis')

const url = await freshDatabase(t, 'resume_browser')
const sql = await sqlClient(t, url)
await sql.query(martenTableSql('mt_doc_score'))
const prefix = `resume-browser-${randomUUID().slice(0, 8)}`
const options = {
  databases: [{ name: 'main', url }],
  capture: { leaderRetryMs: 200 },
  entities: { Score: { access: 'public' as const, payload: 'full' as const, feed: true } },
  bus: { provider: 'redis' as const, url: REDIS_URL, prefix }
}
const instances: RunningApp[] = [await startApp(t, options), await startApp(t, options)]
const proxies: CuttableProxy[] = await Promise.all(instances.map(async ({ url }) => await cuttableProxy(t, Number(new URL(url).port))))
const socketUrls = proxies.map((p) => `ws://127.0.0.1:${p.port}/ws`)

// the page and the SDK as the package bundles it for browsers (its `bundle` script), from the sources
const { outputFiles: [sdk] } = await build({
  entryPoints: [join(packageRoot, 'lib', 'client', 'index.ts')], bundle: true, format: 'esm', platform: 'browser', target: 'es2020', write: false, logLevel: 'warning'
})
const site = createServer((request, response) => {
  if (request.url === '/sdk.js') response.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' }).end(sdk.text)
  else response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end('<!doctype html><title>resume</title>')
})
await new Promise<void>((resolve) => site.listen(0, '127.0.0.1', resolve))
t.teardown(async () => await new Promise((resolve) => site.close(resolve)))
const siteUrl = `http://127.0.0.1:${(site.address() as { port: number }).port}/`

const browser: Browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'] })
t.teardown(async () => await browser.close())

/** What the page's application was handed: `entity`/`feed` as `<id>:<n>`, each onResync, each state. */
interface Seen { entity: string[], feed: string[], resyncs: string[], states: string[] }

/** A page whose client knows both instances (through their proxies) and follows Score m1 and the Score feed. */
async function openPage (): Promise<Page> {
  const page = await browser.newPage()
  await page.goto(siteUrl)
  await page.evaluate(async (urls) => {
    const { ChangefeedClient } = await import('/sdk.js' as string) as typeof import('../../lib/client/index.js')
    const seen: Seen = { entity: [], feed: [], resyncs: [], states: [] }
    Object.assign(window, { seen })
    const client = new ChangefeedClient({ url: urls, backoff: { initialMs: 100, maxMs: 300 } })
    client.onState((s) => seen.states.push(s.to))
    const of = (n: { entityId: string, payload?: unknown }): string => `${n.entityId}:${(n.payload as { n: number }).n}`
    client.subscribe('Score', 'm1', { onNotification: (n) => seen.entity.push(of(n)), onResync: (reason) => seen.resyncs.push(`entity ${reason}`) })
    client.subscribe('Score', '*', { onNotification: (n) => seen.feed.push(of(n)), onResync: (reason) => seen.resyncs.push(`feed ${reason}`) })
  }, socketUrls)
  return page
}

const seenBy = async (page: Page): Promise<Seen> => await page.evaluate(() => (window as unknown as { seen: Seen }).seen)
/** Waits until the page's client reached `state` after its `from`th state change. */
const reached = async (page: Page, state: string, from: number): Promise<void> => {
  await page.waitForFunction(({ state, from }) => (window as unknown as { seen: Seen }).seen.states.slice(from).includes(state), { state, from }, { timeout: 10_000 })
}
/** Waits until the page was handed `entity` and `feed` notifications this many. */
const handed = async (page: Page, entity: number, feed: number): Promise<void> => {
  await page.waitForFunction(({ entity, feed }) => {
    const { seen } = window as unknown as { seen: Seen }
    return seen.entity.length >= entity && seen.feed.length >= feed
  }, { entity, feed }, { timeout: 10_000 })
}

const stats = (): Array<ReturnType<RunningApp['app']['changefeed']['stats']>> => instances.map(({ app }) => app.changefeed.stats())
const total = (of: (s: ReturnType<typeof stats>[number]) => number | undefined): number => stats().reduce((sum, s) => sum + (of(s) ?? 0), 0)
const subscriptions = (): number => total((s) => s.subscriptions.active)

/** Writes Score `id` with `n` in its own transaction (through the table's trigger); `large`: too large to ride the NOTIFY. */
let written = 0
const write = async (id: string, n: number, large = false): Promise<void> => {
  const data = large ? { n, commentary: 'x'.repeat(9000) } : { n }
  await sql.query('INSERT INTO mt_doc_score (id, data) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET data = excluded.data, mt_version = gen_random_uuid()', [id, JSON.stringify(data)])
  written++
}
/** Resolves true once the publisher put every change written so far on the bus (`orDropped`: or dropped it, unwatched). */
const published = async (orDropped = false): Promise<boolean> =>
  await until(() => total((s) => s.router.published + (orDropped ? s.router.unwatched : 0)) === written, 10_000)
/** Waits until the page's application was told to refetch `count` times. */
const resynced = async (page: Page, count: number): Promise<void> => {
  await page.waitForFunction((count) => (window as unknown as { seen: Seen }).seen.resyncs.length >= count, count, { timeout: 10_000 })
}

type Test = Parameters<Parameters<typeof t.test>[0]>[0]

/** Cuts the network (once the instances saw the page leave, runs `meanwhile`), restores it; resolves once the page's client is open again. */
async function cutWhile (t: Test, page: Page, meanwhile: () => Promise<void>): Promise<void> {
  const from = (await seenBy(page)).states.length
  for (const p of proxies) p.cut()
  await reached(page, 'reconnecting', from)
  t.ok(await until(() => subscriptions() === 0), 'the instances saw the page leave')
  await meanwhile()
  const restored = (await seenBy(page)).states.length
  for (const p of proxies) p.restore()
  await reached(page, 'open', restored)
}

t.test('a cut network: the page resumes every subscription from the history, every change once and in order, no onResync, no read', async (t) => {
  const page = await openPage()
  t.ok(await until(() => subscriptions() === 2), 'the page follows m1 and the feed')
  for (const [id, n] of [['m1', 1], ['other', 2], ['m1', 3]] as const) await write(id, n)
  await handed(page, 2, 3)
  const before = { recovered: total((s) => s.connections.resumes.recovered), reads: total((s) => s.router.documentReads) }

  await cutWhile(t, page, async () => {
    for (const [id, n] of [['m1', 4], ['other', 5], ['m1', 6], ['m1', 7], ['other', 8]] as const) await write(id, n)
    t.ok(await published(), 'the changes went out while the page was away')
  })
  t.ok(await until(() => subscriptions() === 2), 'resubscribed')
  for (const [id, n] of [['m1', 9], ['other', 10]] as const) await write(id, n)
  await handed(page, 6, 10)

  const seen = await seenBy(page)
  t.same(seen.entity, ['m1:1', 'm1:3', 'm1:4', 'm1:6', 'm1:7', 'm1:9'], 'the entity: every change once, in order')
  t.same(seen.feed, ['m1:1', 'other:2', 'm1:3', 'm1:4', 'other:5', 'm1:6', 'm1:7', 'other:8', 'm1:9', 'other:10'], 'the feed: every change once, in order')
  t.same(seen.resyncs, [], 'onResync never fired')
  t.equal(total((s) => s.connections.resumes.recovered) - before.recovered, 2, 'both subscriptions resumed from the history (recovered)')
  t.equal(total((s) => s.router.documentReads), before.reads, 'no document read for the resume')
  await page.close()
})

/**
 * A cut during which `meanwhile` writes `first` + 1 and + 2 where the history cannot give them back: the page's
 * resumes are refused, its application is told to refetch (each subscription once), and live changes go on.
 */
async function toldToRefetch (t: Test, first: number, meanwhile: (n: [number, number]) => Promise<void>): Promise<void> {
  const page = await openPage()
  t.ok(await until(() => subscriptions() === 2), 'the page follows m1 and the feed')
  await write('m1', first)
  await handed(page, 1, 1)
  const notRecovered = total((s) => s.connections.resumes.not_recovered)
  await cutWhile(t, page, async () => await meanwhile([first + 1, first + 2]))
  await resynced(page, 2)
  t.equal(total((s) => s.connections.resumes.not_recovered) - notRecovered, 2, 'neither resume could be recovered')
  await write('m1', first + 3)
  await handed(page, 2, 2)
  const seen = await seenBy(page)
  t.same(seen.resyncs.sort(), ['entity reconnected', 'feed reconnected'], 'onResync fired for each subscription')
  t.same(seen.entity, [`m1:${first}`, `m1:${first + 3}`], 'nothing replayed; live changes go on')
  t.same(seen.feed, [`m1:${first}`, `m1:${first + 3}`])
  await page.close()
}

t.test('a cut network while the history is lost: the page is told to refetch, never a silent gap', async (t) => {
  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  await toldToRefetch(t, 11, async ([m1, other]) => {
    // the broker loses this deployment's keys (as a flush or a restart without persistence would): the history too
    const keys = await redis.keys(`*${prefix}*`)
    t.ok(keys.some((k) => k.endsWith(':history')), `the channels kept a history (${keys.length} keys)`)
    await redis.del(...keys)
    await write('m1', m1)
    await write('other', other)
    t.ok(await published(), 'the changes went out while the page was away, on a history started anew')
  })
})

t.test('a cut network while a document too large for the NOTIFY changes, watched by no one: the page is told to refetch, never a silent gap', async (t) => {
  await toldToRefetch(t, 21, async ([m1, other]) => {
    // nobody watches m1 or the feed now: the publisher skips the read and the bus, and the history does not get them
    // (once the cluster's interest says so: an instance updates it a moment after its sockets left)
    const { changefeed } = instances[0].app
    const watching = async (): Promise<number> => await changefeed.watchers('Score', 'm1') + await changefeed.watchers('Score', '*')
    t.ok(await until(async () => await watching() === 0, 15_000), `the cluster sees nobody watching (${await watching()} watchers, ${subscriptions()} subscriptions here)`)
    const unwatched = total((s) => s.router.unwatched)
    await write('m1', m1, true)
    await write('other', other, true)
    t.ok(await published(true), 'the changes were routed while the page was away')
    t.equal(total((s) => s.router.unwatched) - unwatched, 2, 'as unwatched')
  })
})
