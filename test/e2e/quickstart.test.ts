/**
 * The README's first commands, run as written where a newcomer runs them: in a fresh copy of the repository (its
 * files as a clone has them: no node_modules, no dist). The start command installs, builds and serves the demo,
 * which delivers the live match; the test command is the one CI runs on a fresh clone. (The commands from the packed
 * tarball are run by test/e2e/package.test.ts.)
 */
import t from 'tap'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort } from '../helpers/brokers.js'
import { TestClient, isNotification } from '../helpers/client.js'
import { readDocument, shellBlocks } from '../helpers/docs.js'
import { freshCopy, sh } from '../helpers/shell.js'
import { packageRoot } from '../../lib/package.js'

// an npm install from the lockfile and a build: minutes on a busy machine
t.setTimeout(1_200_000)

const [commands] = shellBlocks(readDocument('README.md'))
const start = commands.find((line) => line.includes('--demo'))
const test = commands.find((line) => line !== start && line.includes('test'))

const work = mkdtempSync(join(tmpdir(), 'changefeed-clone-'))
t.teardown(() => rmSync(work, { recursive: true, force: true }))
const clone = join(work, 'fastify-changefeed')
freshCopy(clone)

t.test('the README\'s start command, in a fresh clone, serves the demo', async (t) => {
  if (!t.ok(start, `a start command: ${start}`) || start === undefined) return
  // the port: the README's 8080 may be taken on this machine; PORT moves it, as bin/README says
  const port = await freePort()
  const demo = sh(t, start, clone, { PORT: String(port), npm_config_audit: 'false', npm_config_fund: 'false' })
  const [, address] = await demo.waitFor(/--demo: open (http:\/\/\S+)/)
  t.equal(address, `http://127.0.0.1:${port}`, 'it says where to look')
  t.match(await (await fetch(address + '/')).text(), /Match centre/, 'the match centre')
  const ws = await TestClient.open(address.replace('http', 'ws') + '/ws')
  t.teardown(() => ws.close())
  t.equal((await ws.subscribe('RugbyGameState', 'match-1')).type, 'subscribed')
  t.match((await ws.next(isNotification('RugbyGameState', 'match-1'), 10_000)).data, { changeType: 'updated', payload: { id: 'match-1' } }, 'the live match')
  await demo.stop()
})

t.test('the README\'s test command is the one CI runs on a fresh clone of every submission', async (t) => {
  if (!t.ok(test, `a test command: ${test}`) || test === undefined) return
  // running it here would run this test again; CI runs it on a fresh clone (.ci/run), so it is checked there
  const ci = readFileSync(join(packageRoot, '.ci', 'run'), 'utf8')
  t.ok(ci.split('\n').some((line) => line.trim().startsWith(test.split('#')[0].trim())), `.ci/run runs \`${test.split('#')[0].trim()}\``)
})
