/**
 * The demo pages in a real browser (Debian's Chromium, driven by playwright-core) against the standalone server on
 * the real PostgreSQL: two match pages follow a score written to the database, count each other as watchers and
 * show the latency; an event appended to the match's stream as Marten appends it reaches the timeline; a player
 * replaced leaves the team's live query and comes back; a team edited in one window updates the other; a stopped
 * server shows as reconnecting, and the page catches up when it returns. Screenshots of both pages are saved to
 * test/artifacts/.
 */
import t from 'tap'
import { existsSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { createServer } from 'node:net'
import { randomUUID } from 'node:crypto'
import { chromium, type Browser, type Page } from 'playwright-core'
import { serve } from '../helpers/serve.js'
import { packageRoot } from '../../lib/package.js'
import { freshDatabase, sqlClient } from '../helpers/services.js'
import { reserveSequencesSql, richAppendCommands, streamStateSql, type EventInput, type EventStoreOptions } from '../fixtures/marten/index.js'

const CHROMIUM = '/usr/bin/chromium'
if (!existsSync(CHROMIUM)) throw new Error(`Chromium is not installed at ${CHROMIUM}; install it with: apt-get install -y chromium`)

const url = await freshDatabase(t, 'browser')
const port = await new Promise<number>((resolve) => {
  const s = createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => resolve(p)) })
})
const env = { DATABASE_URL: url, CHANGEFEED_DEMO_TICK_MS: '0' }
let server = serve(t, ['--demo', '--port', String(port)], env)
const base = await server.address
const sql = await sqlClient(t, url)

const browser: Browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'] })
t.teardown(async () => await browser.close())
const open = async (path: string): Promise<Page> => {
  const page = await browser.newPage({ viewport: { width: 800, height: 560 } })
  await page.goto(base + path)
  await page.waitForSelector('#status[data-state="open"]')
  return page
}
const artifacts = join(packageRoot, 'test', 'artifacts') + '/'
mkdirSync(artifacts, { recursive: true })
/** Waits until the element's text is `equals`, or has every string of `has` and none of `lacks`. */
interface Expected { equals?: string, has?: string[], lacks?: string[] }
const text = async (page: Page, selector: string, expected: Expected): Promise<void> => {
  await page.waitForFunction(({ selector, expected: { equals, has = [], lacks = [] } }: { selector: string, expected: Expected }) => {
    const s = document.querySelector(selector)?.textContent ?? ''
    return equals === undefined ? has.every((h) => s.includes(h)) && !lacks.some((l) => s.includes(l)) : s === equals
  }, { selector, expected }, { timeout: 5000 })
}
const setScore = async (home: number, away: number): Promise<void> => {
  await sql.query('UPDATE mt_doc_rugbygamestate SET data = data || $1::jsonb, mt_version = gen_random_uuid() WHERE id = \'match-1\'',
    [JSON.stringify({ homeScore: home, awayScore: away, minute: 62, period: 'Second Half', lastEvent: 'Try (home)' })])
}

/** Marten's default (rich) append, in one transaction: sequence numbers reserved, the stream's version read and raised. */
const STORE: EventStoreOptions = { schema: 'public', streamIdentity: 'string' }
const append = async (events: EventInput[]): Promise<void> => {
  const { rows: sequences } = await sql.query<{ nextval: string }>(reserveSequencesSql(STORE.schema, events.length))
  const state = streamStateSql(STORE, 'match-1')
  const { rows: [stream] } = await sql.query<{ version: string }>(state.text, state.values)
  const commands = richAppendCommands(STORE, {
    streamId: 'match-1', streamType: 'match', events, currentVersion: stream === undefined ? null : Number(stream.version), sequences: sequences.map((r) => r.nextval)
  })
  await sql.query('BEGIN')
  for (const c of commands) await sql.query(c.text, c.values)
  await sql.query('COMMIT')
}

t.test('a score written to the database shows on two match pages, which count each other', async (t) => {
  const [a, b] = [await open('/'), await open('/')]
  await setScore(21, 14)
  for (const page of [a, b]) {
    await page.waitForFunction(() => document.getElementById('home')?.textContent === '21', undefined, { timeout: 5000 })
    t.equal(await page.textContent('#away'), '14')
    await text(page, '#watching', { equals: '2 watching' })
    t.pass('the page counts both watchers')
    t.match(await page.textContent('#latency'), /^\d+ ms$/, 'and shows how long the change took to arrive')
  }
  await a.waitForFunction(() => document.querySelectorAll('#lineup-home tr').length === 16 && document.querySelectorAll('#lineup-away tr').length === 16)
  t.pass('both line-ups show the fifteen players on the field')
  await a.close()
  await b.close()
})

t.test('an event appended to the match\'s stream shows in the timeline', async (t) => {
  const page = await open('/')
  await text(page, '#timeline', { has: ['Kick-off'] })
  t.pass('the timeline starts from the stream, read when the page opens')
  await append([
    { id: randomUUID(), type: 'try_scored', dotnetType: 'Demo.Events.TryScored, Demo', data: { minute: 63, teamId: 'team-2', playerId: 'player-2-14', player: 'F. North' } },
    { id: randomUUID(), type: 'conversion_kicked', dotnetType: 'Demo.Events.ConversionKicked, Demo', data: { minute: 63, teamId: 'team-2', playerId: 'player-2-10', player: 'E. Price' } }
  ])
  await text(page, '#timeline li:first-child', { has: ['Conversion, E. Price'] })
  t.match(await page.textContent('#timeline li:nth-child(2)'), /63'TRYTry, F\. North/, 'both events of the append, newest first')
  t.equal(await page.getAttribute('#timeline li:first-child', 'class'), 'away new', 'marked as the away team\'s, and new')
  await page.close()
})

t.test('a replaced player leaves the team\'s live query, and enters it again', async (t) => {
  const page = await open('/')
  const onField = async (id: string, on: boolean): Promise<void> => {
    await sql.query('UPDATE mt_doc_player SET data = jsonb_set(data, \'{onField}\', to_jsonb($2::boolean)), mt_version = gen_random_uuid() WHERE id = $1', [id, on])
  }
  await text(page, '#lineup-home', { has: ['A. Tane'] })
  await onField('player-1-09', false)
  await text(page, '#moves-home', { has: ['A. Tane off'] })
  t.notMatch(await page.textContent('#lineup-home'), 'A. Tane', 'gone from the line-up')
  await onField('player-1-16', true)
  await text(page, '#moves-home', { has: ['E. Tamaki on'] })
  t.equal(await page.getAttribute('#lineup-home tr:last-child', 'class'), 'entered', 'the replacement is in the line-up, marked as on')
  await onField('player-1-16', false)
  await onField('player-1-09', true)
  await text(page, '#lineup-home', { has: ['A. Tane'], lacks: ['E. Tamaki'] })
  t.notMatch(await page.textContent('#lineup-away'), 'A. Tane', 'the other team\'s query never saw them')
  // by now the page has a score, a timeline and replacements to show
  await page.screenshot({ path: artifacts + 'match-centre.png', fullPage: true })
  t.ok(existsSync(artifacts + 'match-centre.png'), 'screenshot saved to test/artifacts/match-centre.png')
  await page.close()
})

t.test('a player added in one window appears in the other', async (t) => {
  const [a, b] = [await open('/team'), await open('/team')]
  await a.waitForFunction(() => (document.getElementById('players')?.children.length ?? 0) > 0)
  await a.fill('#name', 'New Kid')
  await a.click('button')
  await b.waitForFunction(() => document.getElementById('players')?.textContent?.includes('New Kid') === true, undefined, { timeout: 5000 })
  t.equal(await b.textContent('#echo'), 'updated in another window', 'the other window knows it was not its own edit')
  await a.waitForFunction(() => document.getElementById('echo')?.textContent === 'saved')
  t.pass('the editing window recognises its own write by its origin')
  await a.screenshot({ path: artifacts + 'team.png' })
  t.ok(existsSync(artifacts + 'team.png'), 'screenshot saved to test/artifacts/team.png')
  await a.close()
  await b.close()
})

t.test('two users on the team page see who else is editing, and which player they point at', async (t) => {
  const [ana, ben] = [await open('/team?user=Ana'), await open('/team?user=Ben')]
  const hereOf = async (page: Page): Promise<string> => await page.evaluate(() => [...document.querySelectorAll('#here li')].map((li) => li.textContent).sort().join(' | '))
  await ana.waitForFunction(() => document.querySelectorAll('#here li').length === 2, undefined, { timeout: 5000 })
  t.equal(await hereOf(ana), 'Ben: looking | you: looking', 'each sees the other')
  await ben.focus('#name')
  await ana.waitForFunction(() => document.getElementById('here')?.textContent?.includes('Ben: adding a player') === true, undefined, { timeout: 5000 })
  t.pass('what the other does, as it changes (an update of its info)')
  await ben.waitForFunction(() => (document.getElementById('players')?.children.length ?? 0) > 0)
  const player = await ben.textContent('#players li:first-child')
  await ben.hover('#players li:first-child')
  await ana.waitForFunction(() => document.querySelector('#players li:first-child')?.getAttribute('data-touched') === 'Ben', undefined, { timeout: 5000 })
  t.pass(`the player Ben points at (${player ?? ''}) is marked on Ana's page, by a signal`)
  t.equal(await ben.getAttribute('#players li:first-child', 'data-touched'), null, 'a signal is not echoed to its sender')
  await ana.screenshot({ path: artifacts + 'team-presence-ana.png' })
  await ben.screenshot({ path: artifacts + 'team-presence-ben.png' })
  t.ok(existsSync(artifacts + 'team-presence-ana.png') && existsSync(artifacts + 'team-presence-ben.png'), 'screenshots saved to test/artifacts/team-presence-*.png')
  await ben.close()
  await ana.waitForFunction(() => document.querySelectorAll('#here li').length === 1, undefined, { timeout: 5000 })
  t.equal(await hereOf(ana), 'you: looking', 'a closed window leaves')
  await ana.close()
})

t.test('a stopped server shows as reconnecting; the page catches up when it returns', async (t) => {
  const page = await open('/')
  server.child.kill('SIGTERM')
  await server.exit
  await page.waitForSelector('#status[data-state="reconnecting"]', { timeout: 5000 })
  t.equal(await page.textContent('#status'), 'reconnecting…')
  await setScore(33, 14) // written while the server is down: no notification can carry it
  server = serve(t, ['--demo', '--port', String(port)], env)
  await server.address
  // the page retries with full-jitter backoff capped at 30 s (the client's default): while the server was down its
  // delays grew, so its next try may be up to that far away
  await page.waitForSelector('#status[data-state="open"]', { timeout: 35_000 })
  await page.waitForFunction(() => document.getElementById('home')?.textContent === '33', undefined, { timeout: 5000 })
  t.pass('after the reconnect the page refetched what it missed')
  await setScore(40, 14)
  await page.waitForFunction(() => document.getElementById('home')?.textContent === '40', undefined, { timeout: 5000 })
  t.pass('and follows live changes again')
  await page.close()
})

t.test('when the simulated match ends and the next kicks off, the timeline is the new match\'s alone', async (t) => {
  // the demo's own pace knob: a minute every 40 ms, so full time comes after about three seconds
  const fast = serve(t, ['--demo', '--port', '0'], { DATABASE_URL: await freshDatabase(t, 'browser_restart'), CHANGEFEED_DEMO_TICK_MS: '40' })
  const page = await browser.newPage({ viewport: { width: 800, height: 560 } })
  t.teardown(async () => await page.close())
  await page.goto(await fast.address + '/')
  // the page has shown the first match near its end, then the next one well under way (before its half time)
  await page.waitForFunction(() => {
    const minute = Number.parseInt(document.getElementById('clock')?.textContent ?? '', 10)
    const seen = window as unknown as { highest?: number }
    seen.highest = Math.max(seen.highest ?? 0, Number.isNaN(minute) ? 0 : minute)
    return seen.highest >= 70 && minute >= 5 && minute <= 30
  }, undefined, { timeout: 30_000, polling: 10 })
  const { now, items } = await page.evaluate(() => ({
    now: Number.parseInt(document.getElementById('clock')?.textContent ?? '', 10),
    items: [...document.querySelectorAll('#timeline li')].map((li) => li.textContent ?? '')
  }))
  t.ok(items.length > 0, `the timeline shows the new match (${items.length} events at ${now}')`)
  t.match(items.at(-1), /^0'KOKick-off$/, 'from its kick-off')
  t.notOk(items.some((text) => /Full time|Half time/.test(text)), 'nothing of the match before: no full time, no half time')
  t.ok(items.every((text) => Number.parseInt(text, 10) <= now + 1), 'no event later than the clock')
})
