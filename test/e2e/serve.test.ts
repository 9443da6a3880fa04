/**
 * The standalone server: config files against the real PostgreSQL (several databases, one channel), errors that
 * name the bad path and exit non-zero, environment overrides, and `--demo` on the embedded PGlite.
 */
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { serve, type Served } from '../helpers/serve.js'
import { REDIS_URL, freePort, requireService } from '../helpers/brokers.js'
import { TestClient, isNotification } from '../helpers/client.js'
import { freshDatabase, martenTableSql, sqlClient } from '../helpers/services.js'
import { applyEnvironment, loadConfig } from '../../bin/config.js'
import { packageVersion } from '../../lib/package.js'

const dir = mkdtempSync(join(tmpdir(), 'changefeed-config-'))
const writeConfig = (name: string, content: unknown): string => {
  const file = join(dir, name)
  writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content, null, 2))
  return file
}

t.test('a config file with several databases and one channel runs against PostgreSQL', async (t) => {
  const foundryUrl = await freshDatabase(t, 'cli_foundry')
  const ballrUrl = await freshDatabase(t, 'cli_ballr')
  const ballr = await sqlClient(t, ballrUrl)
  const foundry = await sqlClient(t, foundryUrl)
  await ballr.query(martenTableSql('mt_doc_rugbygamestate'))
  await foundry.query(martenTableSql('mt_doc_user'))
  const file = writeConfig('changefeed.json', {
    server: { host: '127.0.0.1', port: 0, path: '/ws', backlog: 1234 },
    databases: [{ name: 'foundry', url: foundryUrl }, { name: 'ballr', url: ballrUrl }],
    capture: { channel: 'foundry:db_changes', tables: ['mt_doc_%'], installTriggers: true, mode: 'notify' },
    entities: {
      RugbyGameState: { database: 'ballr', table: 'mt_doc_rugbygamestate', access: 'public', payload: 'full' },
      User: { database: 'foundry', table: 'mt_doc_user', access: 'owner' }
    },
    bus: { provider: 'memory', prefix: 'foundry' },
    auth: { anonymous: true, adminRoles: ['Admin'] },
    limits: { maxSubscriptionsPerConnection: 100 },
    telemetry: { prometheus: false, otlpUrl: null }
  })
  const server = serve(t, ['--config', file])
  const address = await server.address
  // a listening socket's Send-Q is its backlog: a burst of reconnects queues there, not in the clients' SYN retries
  t.match(execFileSync('ss', ['-ltnH', `sport = :${new URL(address).port}`]).toString(), /LISTEN\s+\d+\s+1234\s/, 'listens with the backlog configured')
  const ws = await TestClient.open(address.replace('http', 'ws') + '/ws')
  t.teardown(() => ws.close())
  t.equal((await ws.subscribe('RugbyGameState', 'match-1')).type, 'subscribed')
  await ballr.query('INSERT INTO mt_doc_rugbygamestate (id, data) VALUES (\'match-1\', \'{"homeScore":3}\')')
  t.match((await ws.next(isNotification('RugbyGameState', 'match-1'))).data, { payloadType: 'full', payload: { homeScore: 3 } })
  t.match(await ws.subscribe('User', 'user-1'), { type: 'subscription_error', data: { code: 'unauthenticated' } }, 'owner types need a user')
  t.notMatch(server.stdout() + server.stderr(), /postgres:\/\/[^"]*@/, 'no connection string with credentials in the logs')
})

const broken: Array<[string, unknown, RegExp]> = [
  ['not JSON', '{ "server": ', /CHANGEFEED_CONFIG_FILE.*not valid JSON/],
  ['a JSON syntax error', '{\n  "server": { "port": 8080 },\n}\n', /CHANGEFEED_CONFIG_FILE.*not valid JSON: line 3, column 1/],
  ['not an object', '[1, 2]', /CHANGEFEED_CONFIG_FILE.*top level must be a JSON object/],
  ['a wrong access kind', { entities: { Team: { access: 'everyone' } } }, /\/entities\/Team\/access/],
  ['an unknown field', { server: { port: 8080, colour: 'blue' } }, /\/server/],
  ['a port out of range', { server: { port: 70000 } }, /\/server\/port/],
  ['an entity in an unknown database', { databases: [{ name: 'a', url: 'postgres://x/a' }], entities: { Team: { access: 'public', database: 'b' } } }, /\/entities\/Team\/database/],
  ['two databases of one name', { databases: [{ name: 'a', url: 'postgres://x/a' }, { name: 'a', url: 'postgres://x/b' }] }, /\/databases: duplicate name/],
  ['a bus without its url', { bus: { provider: 'redis' } }, /\/bus\/url/]
]

for (const [what, content, expected] of broken) {
  t.test(`a config file with ${what} is refused, naming the problem`, async (t) => {
    const file = writeConfig(`broken-${what.replace(/\W+/g, '-')}.json`, content)
    const server = serve(t, ['--config', file])
    const { code } = await server.exit
    t.equal(code, 1, 'exits non-zero')
    t.match(server.stderr(), expected)
    t.match(server.stderr(), file, 'names the file')
  })
}

t.test('a missing config file and bad flags are refused', async (t) => {
  const missing = serve(t, ['--config', join(dir, 'nope.json')])
  t.equal((await missing.exit).code, 1)
  t.match(missing.stderr(), /CHANGEFEED_CONFIG_FILE.*file not found/)
  const badPort = serve(t, ['--port', 'eighty'])
  t.equal((await badPort.exit).code, 1)
  t.match(badPort.stderr(), /--port must be a port number/)
  const unknown = serve(t, ['--colour'])
  t.equal((await unknown.exit).code, 1)
  t.match(unknown.stderr(), /Usage: fastify-changefeed/)
  const badEnvironment = serve(t, [], { DATABASE_URL: 'postgres://127.0.0.1/none', PORT: 'abc' })
  t.equal((await badEnvironment.exit).code, 1)
  t.equal(stderrLines(badEnvironment).length, 1, 'one line on stderr')
  t.match(badEnvironment.stderr(), /CHANGEFEED_INVALID_OPTIONS.*PORT.*"abc"/, 'PORT=abc names the variable')
})

t.test('--version prints the version', async (t) => {
  const server = serve(t, ['--version'])
  t.equal((await server.exit).code, 0)
  t.equal(server.stdout(), `${packageVersion}\n`)
})

t.test('environment variables override the common fields', async (t) => {
  const env = { DATABASE_URL: 'postgres://db/main', REDIS_URL: 'redis://r:6379', PORT: '9000', JWT_SECRET: 's3cret', HOST: '0.0.0.0' }
  const config = applyEnvironment({ databases: [{ name: 'main', url: 'postgres://old/main' }, { name: 'other', url: 'postgres://x/o' }] }, env)
  t.same(config.databases, [{ name: 'main', url: 'postgres://db/main' }, { name: 'other', url: 'postgres://x/o' }])
  const options = loadConfig({ env, port: 9100 })
  t.equal(options.server.port, 9100, 'the flag beats the environment')
  t.equal(options.server.host, '0.0.0.0')
  t.match(options.bus, { provider: 'redis', url: 'redis://r:6379', prefix: 'changefeed' })
  t.equal(options.auth.jwt?.secret, 's3cret')
  t.match(options.telemetry, { healthPath: '/health', statsPath: '/changefeed/stats' }, 'the standalone server serves health and statistics')
  t.same(loadConfig({ env: { DATABASE_URL: 'pglite://memory' } }).databases, [{ name: 'main', url: 'pglite://memory' }], 'the embedded database when asked for')
})

const stderrLines = (server: Served): string[] => server.stderr().split('\n').filter((line) => line !== '')
/** The structured log's lines (stdout), parsed. */
const logLines = (server: Served): Array<{ level: number, msg: string, [key: string]: unknown }> =>
  server.stdout().split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line))

t.test('no database configured: only --demo runs on the embedded one', async (t) => {
  t.throws(() => loadConfig({}), { code: 'CHANGEFEED_NO_DATABASE' })
  t.throws(() => loadConfig({ file: writeConfig('no-database.json', { databases: [] }) }), { code: 'CHANGEFEED_NO_DATABASE' })
  t.same(loadConfig({ demo: true }).databases, [{ name: 'main', url: 'pglite://memory' }])
  t.same(loadConfig({ demo: true, env: { DATABASE_URL: 'postgres://db/demo' } }).databases, [{ name: 'main', url: 'postgres://db/demo' }], 'a configured one wins')
  t.match(loadConfig({ file: writeConfig('quiet.json', { databases: [{ name: 'a', url: 'postgres://x/a' }], telemetry: { healthPath: null } }) }).telemetry,
    { healthPath: null, statsPath: '/changefeed/stats' }, 'the file may turn health off')

  const server = serve(t, ['--port', '0'])
  t.equal((await server.exit).code, 1, 'the server refuses to start')
  t.equal(stderrLines(server).length, 1, 'one line on stderr')
  t.match(server.stderr(), /CHANGEFEED_NO_DATABASE/)
})

for (const [provider, userinfo, redacted] of [['redis', 'user:bus-secret', 'user:[redacted]'], ['nats', 'bus-token', '[redacted]']] as const) {
  t.test(`a ${provider} broker that is down stops the start within a bound, with one coded line naming it`, async (t) => {
    const address = `127.0.0.1:${await freePort()}`
    const file = writeConfig(`${provider}-down.json`, {
      databases: [{ name: 'main', url: await freshDatabase(t, `cli_${provider}_down`) }],
      bus: { provider, url: `${provider}://${userinfo}@${address}` }
    })
    const startedAt = Date.now()
    const server = serve(t, ['--config', file, '--port', '0'])
    t.equal((await server.exit).code, 1)
    // the broker is given a few seconds (CONNECT_TIMEOUT_MS); this only tells a start that gives up from one that
    // waits for the broker forever, with room for a loaded machine's process start
    t.ok(Date.now() - startedAt < 30_000, `it gives up (${Date.now() - startedAt} ms)`)
    const [line, ...more] = stderrLines(server)
    t.same(more, [], 'one line on stderr')
    t.match(line, /CHANGEFEED_BUS_UNAVAILABLE/)
    t.ok(line.includes(`${provider}://${redacted}@${address}`), 'names the broker, credentials redacted')
    t.notMatch(server.stdout() + server.stderr(), /bus-secret|bus-token/, 'no credential anywhere')
    const message = line.slice(line.indexOf('CHANGEFEED_BUS_UNAVAILABLE: ') + 'CHANGEFEED_BUS_UNAVAILABLE: '.length)
    t.notOk(server.stdout().includes(message), 'the structured log does not repeat the message')
    t.match(logLines(server).find((l) => l.level === 60), { code: 'CHANGEFEED_BUS_UNAVAILABLE' }, 'it has the code')
  })
}

t.test('a database that does not answer stops the start with one coded line naming it, without the password', async (t) => {
  const port = await freePort()
  const server = serve(t, ['--port', '0'], { DATABASE_URL: `postgres://postgres:db-secret@127.0.0.1:${port}/ballr` })
  t.equal((await server.exit).code, 1)
  const [line, ...more] = stderrLines(server)
  t.same(more, [], 'one line on stderr')
  t.match(line, /CHANGEFEED_DATABASE_UNAVAILABLE/)
  t.ok(line.includes(`127.0.0.1:${port}`), 'names the server')
  t.notMatch(server.stdout() + server.stderr(), /db-secret/, 'no password anywhere')
})

t.test('a normal start logs nothing at warn level, and says truthfully that it leads', async (t) => {
  await requireService('Redis')
  const url = await freshDatabase(t, 'cli_quiet')
  const sql = await sqlClient(t, url)
  await sql.query(martenTableSql('mt_doc_team'))
  const file = writeConfig('quiet-start.json', {
    databases: [{ name: 'main', url }],
    entities: { Team: { access: 'public' } },
    bus: { provider: 'redis', url: REDIS_URL, prefix: `quiet-${process.pid}` }
  })
  const server = serve(t, ['--config', file, '--port', '0'])
  const address = await server.address
  t.match(await (await fetch(address + '/health/ready')).json(), { ready: true, databases: { main: { leader: true } } })
  t.match(logLines(server).find((l) => l.msg === 'changefeed: listening'), { leader: true }, 'the log agrees with health')
  t.same(logLines(server).filter((l) => l.level >= 40), [], 'no warning, no error')
})

t.test('--demo starts quietly: no log line unless LOG_LEVEL asks, where to look, and an admin account for the statistics', async (t) => {
  const server = serve(t, ['--demo', '--port', '0'], { DATABASE_URL: await freshDatabase(t, 'cli_demo_quiet'), CHANGEFEED_DEMO_TICK_MS: '50', LOG_LEVEL: '' })
  const address = await server.address
  t.match(await (await fetch(address + '/')).text(), /Match centre/)
  t.equal((await fetch(address + '/changefeed/stats')).status, 401, 'the statistics need credentials')
  const [, user, password] = /curl -u ([^:\s]+):(\S+) /.exec(server.stdout()) ?? []
  const stats = await fetch(address + '/changefeed/stats', { headers: { authorization: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}` } })
  t.equal(stats.status, 200, 'the account the demo announced reads them')
  t.match(server.stdout(), new RegExp(`open ${address}\\b`), 'it says where to look')
  t.same(server.stdout().split('\n').filter((line) => line.startsWith('{')), [], 'no log line: no request logs')
  t.equal(server.stderr(), '')
})

t.test('--demo logs no warning: the tables it creates are there before any is looked for', async (t) => {
  const server = serve(t, ['--demo', '--port', '0'], { DATABASE_URL: await freshDatabase(t, 'cli_demo_warnings'), CHANGEFEED_DEMO_TICK_MS: '0' })
  await server.address
  t.ok(logLines(server).some((l) => l.msg === 'changefeed: listening'), 'it logs at info level when told')
  t.same(logLines(server).filter((l) => l.level >= 40), [], 'no warning, no error')
})

t.test('--demo starts on the embedded PostgreSQL and delivers the live match', async (t) => {
  const server = serve(t, ['--demo', '--port', '0'])
  const address = await server.address
  const page = await fetch(address + '/')
  t.match(await page.text(), /Match centre/, 'serves the demo page')
  const ws = await TestClient.open(address.replace('http', 'ws') + '/ws')
  t.teardown(() => ws.close())
  t.equal((await ws.subscribe('RugbyGameState', 'match-1')).type, 'subscribed')
  const n = await ws.next(isNotification('RugbyGameState', 'match-1'), 10_000)
  t.match(n.data, { changeType: 'updated', payloadType: 'full', payload: { id: 'match-1', homeTeamId: 'team-1' } })
  t.type(n.data.payload.homeScore, 'number')
  server.child.kill('SIGTERM')
  t.equal((await ws.closed).code, 1012, 'SIGTERM drains: sockets closed with 1012 (service restart), to resume elsewhere')
  t.equal((await server.exit).code, 0, 'and exits cleanly')
})
