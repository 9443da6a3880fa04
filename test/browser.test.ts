/**
 * The demo pages in a real browser (Debian's Chromium, driven by playwright-core) against the standalone server on
 * the real PostgreSQL: two match pages follow a score written to the database; a team edited in one window updates
 * the other; a stopped server shows as reconnecting, and the page catches up when it returns. A screenshot of the
 * match page is saved to test/artifacts/.
 */
import t from 'tap'
import { existsSync, mkdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { createServer } from 'node:net'
import { chromium, type Browser, type Page } from 'playwright-core'
import { serve } from './helpers/serve.js'
import { freshDatabase, sqlClient } from './helpers/services.js'

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
const setScore = async (home: number, away: number): Promise<void> => {
  await sql.query('UPDATE mt_doc_rugbygamestate SET data = data || $1::jsonb, mt_version = gen_random_uuid() WHERE id = \'match-1\'',
    [JSON.stringify({ homeScore: home, awayScore: away, minute: 62, period: 'Second Half', lastEvent: 'Try (home)' })])
}

t.test('a score written to the database shows on two match pages', async (t) => {
  const [a, b] = [await open('/'), await open('/')]
  await setScore(21, 14)
  for (const page of [a, b]) {
    await page.waitForFunction(() => document.getElementById('home')?.textContent === '21', undefined, { timeout: 5000 })
    t.equal(await page.textContent('#away'), '14')
  }
  const artifacts = fileURLToPath(new URL('./artifacts/', import.meta.url))
  mkdirSync(artifacts, { recursive: true })
  await a.screenshot({ path: artifacts + 'match-centre.png' })
  t.ok(existsSync(artifacts + 'match-centre.png'), 'screenshot saved to test/artifacts/match-centre.png')
  await a.close()
  await b.close()
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
  await a.close()
  await b.close()
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
  await page.waitForSelector('#status[data-state="open"]', { timeout: 20_000 })
  await page.waitForFunction(() => document.getElementById('home')?.textContent === '33', undefined, { timeout: 5000 })
  t.pass('after the reconnect the page refetched what it missed')
  await setScore(40, 14)
  await page.waitForFunction(() => document.getElementById('home')?.textContent === '40', undefined, { timeout: 5000 })
  t.pass('and follows live changes again')
  await page.close()
})
