/**
 * Options and the entity registry built from them, without a database. resolveOptions: the defaults, every refusal
 * with CHANGEFEED_INVALID_OPTIONS naming the bad path, the caller's object left alone; the option reference
 * (describeOptions, optionsMarkdown) generated from the same schema. The registry: declared types and Marten naming,
 * discovery of the other watched tables, lookup, tenancy, the database of a tenant, event streams, inlined tables.
 * The config file's JSON errors located by line and column, and environment overrides that name their variable.
 */
import t from 'tap'
import { resolveOptions, type ChangefeedOptions, type ResolvedOptions } from '../../../lib/options.js'
import { describeOptions, optionsMarkdown } from '../../../bin/docs.js'
import { EntityRegistry, dotnetShortName, martenTable } from '../../../lib/entities.js'
import { applyEnvironment, jsonErrorAt } from '../../../bin/config.js'
import type { TestContext } from '../fixtures/fakes.js'

const main = { name: 'main', url: 'postgres://localhost/main' }
const red = { name: 'red_db', url: 'postgres://localhost/red', tenant: 'red' }
const blue = { name: 'blue_db', url: 'postgres://localhost/blue', tenant: 'blue' }

/** The value at a dotted path of the resolved options. */
function at (options: ResolvedOptions, path: string): unknown {
  let value: unknown = options
  for (const key of path.split('.')) value = (value as Record<string, unknown> | undefined)?.[key]
  return value
}

t.test('resolveOptions: defaults: every default the reference states is the resolved value', async (t) => {
  for (const input of [undefined, null, {}]) {
    const options = resolveOptions(input)
    t.match(options, {
      server: { host: '127.0.0.1', port: 8080, path: '/ws', allowedOrigins: null, trustProxy: false },
      databases: [],
      capture: { channel: 'changefeed', mode: 'notify', schema: 'public', tables: ['mt_doc_%'], events: { enabled: false, types: {} } },
      entities: {},
      discovery: { enabled: true, access: null },
      bus: { provider: 'memory', prefix: 'changefeed', instanceTtlSeconds: 15 },
      auth: { anonymous: true, adminRoles: ['Admin'] },
      limits: { maxSubscriptionsPerConnection: 100, maxMessageBytes: 4096, feedMessagesPerSecond: 10, feedBatchIntervalMs: 500 },
      telemetry: { healthPath: null, statsPath: null, prometheus: false, otlpUrl: null }
    }, String(input))
  }
  // auth.jwt is optional: its fields' defaults apply once it is given
  const options = resolveOptions({ auth: { jwt: { secret: 's' } } })
  const stated = describeOptions().filter((row) => row.default !== '' && !row.path.includes('<Type>') && !row.path.includes('[]'))
  t.ok(stated.length > 50)
  for (const row of stated) t.same(at(options, row.path), JSON.parse(row.default), row.path)
})

t.test('resolveOptions: the caller\'s object is never changed, nor shared', async (t) => {
  const input: ChangefeedOptions = { databases: [main], capture: { stream: { enabled: true } }, bus: { provider: 'nats', url: 'nats://localhost:4222' }, entities: { Team: { access: 'public' } } }
  const before = JSON.stringify(input)
  const options = resolveOptions(input)
  t.equal(JSON.stringify(input), before)
  t.equal(options.capture.stream.url, 'nats://localhost:4222', 'the stream defaults to the NATS bus')
  options.databases[0].name = 'changed'
  options.entities.Team.access = 'admin'
  t.equal(input.databases?.[0]?.name, 'main')
  t.equal(input.entities?.Team?.access, 'public')
})

/** Asserts that `input` is refused with the options error, its message naming every one of `paths`. */
function refuses (t: TestContext, input: unknown, paths: string[], what: string): void {
  t.throws(() => resolveOptions(input), { code: 'CHANGEFEED_INVALID_OPTIONS' }, what)
  try {
    resolveOptions(input)
  } catch (err) {
    for (const path of paths) t.match((err as Error).message, path, `${what}: names ${path}`)
  }
}

t.test('resolveOptions: schema violations name their path, all of them at once', async (t) => {
  refuses(t, { foo: 1 }, ['/', 'foo'], 'an unknown top-level option')
  refuses(t, { server: { port: 70000, path: 'ws' }, limits: { maxMessageBytes: 10 } }, ['/server/port', '/server/path', '/limits/maxMessageBytes'], 'three at once')
  refuses(t, { server: { prot: 1 } }, ['/server', 'prot'], 'a misspelt option')
  refuses(t, { databases: [{ name: 'main' }] }, ['/databases/0', 'url'], 'a missing url')
  refuses(t, { databases: [{ ...main, name: '1main' }] }, ['/databases/0/name'], 'a database name that is not an identifier')
  refuses(t, { entities: { Team: { access: 'everyone' } } }, ['/entities/Team/access', '"public"'], 'an unknown access kind, with the allowed ones')
  refuses(t, { entities: { Team: {} } }, ['/entities/Team', 'access'], 'an entity without access')
  refuses(t, { entities: { Team: { access: 'public', payload: 'all' } } }, ['/entities/Team/payload'], 'an unknown payload mode')
  refuses(t, { bus: { provider: 'kafka' } }, ['/bus/provider'], 'an unknown bus')
  refuses(t, { bus: { prefix: 'a:b' } }, ['/bus/prefix'], 'a prefix with ":"')
  refuses(t, { limits: { subscribeRatePerSecond: 0 } }, ['/limits/subscribeRatePerSecond'], 'a rate of 0')
  refuses(t, { server: { allowedOrigins: 'https://app.example' } }, ['/server/allowedOrigins'], 'one origin, not a list')
  refuses(t, { auth: { jwt: { secret: 's', algorithms: ['none'] } } }, ['/auth/jwt/algorithms/0'], 'alg none')
})

t.test('resolveOptions: entity type names are identifiers: a name the protocol cannot subscribe to is refused', async (t) => {
  for (const name of ['Bad-Name', 'Team@red', 'Te:am', '1Team', '']) {
    refuses(t, { entities: { [name]: { access: 'public' } } }, [`/entities/${name}`], JSON.stringify(name))
  }
  t.ok(resolveOptions({ entities: { 'Ns.Team_2': { access: 'public' }, _x: { access: 'public' } } }).entities['Ns.Team_2'])
})

t.test('resolveOptions: databases and tenants', async (t) => {
  refuses(t, { databases: [main, { ...main, url: 'postgres://elsewhere/main' }] }, ['/databases', '"main"'], 'a database name twice')
  refuses(t, { databases: [red, { ...blue, tenant: 'red' }] }, ['/databases', '"red"'], 'a tenant with two databases')
  refuses(t, { databases: [main, { name: 'archive', url: 'postgres://127.0.0.1/archive' }], entities: { Team: { access: 'public' } } }, ['/entities/Team/database'],
    'several databases of no tenant: an entity names its own')
  t.ok(resolveOptions({ databases: [main, red, blue], entities: { Team: { access: 'public' } } }), 'databases of tenants: an entity naming none is fed by theirs')
  t.ok(resolveOptions({ databases: [{ ...main, tenantRegistry: true }, red], entities: { Team: { access: 'public' } } }), 'a tenant registry: the same')
  refuses(t, { databases: [{ ...main, tenantRegistry: { table: '' } }] }, ['/databases/0/tenantRegistry'], 'a registry table without a name')
  refuses(t, { databases: [main], entities: { Team: { access: 'public', database: 'other' } } }, ['/entities/Team/database', '"other"'], 'a database not in /databases')
  refuses(t, { databases: [main, red], entities: { Team: { access: 'public', database: ['main', 'red_db'] } } }, ['/entities/Team/database'],
    'several databases, not each a tenant\'s')
  const options = resolveOptions({ databases: [red, blue, main], entities: { User: { access: 'public', database: ['red_db', 'blue_db'] }, Team: { access: 'public', database: 'main' } } })
  t.same(options.entities.User.database, ['red_db', 'blue_db'])
  t.ok(resolveOptions({ databases: [main], entities: { Team: { access: 'public' } } }), 'one database: entities need not name it')
})

t.test('resolveOptions: cross-field rules: untypedAs, the JWT key source, NATS and the stream', async (t) => {
  refuses(t, { entities: { Match: { access: 'public' } }, capture: { events: { untypedAs: 'Game' } } }, ['/capture/events/untypedAs', '"Game"'], 'untypedAs names no entity')
  t.equal(resolveOptions({ entities: { Match: { access: 'public' } }, capture: { events: { untypedAs: 'Match' } } }).capture.events.untypedAs, 'Match')
  refuses(t, { auth: { jwt: {} } }, ['/auth/jwt'], 'no key source')
  refuses(t, { auth: { jwt: { secret: 's', publicKey: 'k' } } }, ['/auth/jwt'], 'two key sources')
  refuses(t, { auth: { jwt: { secret: 's', jwksUrl: 'https://idp.example/jwks.json' } } }, ['/auth/jwt'], 'a secret and a JWKS')
  refuses(t, { auth: { jwt: { jwksUrl: 'file:///etc/keys.json' } } }, ['/auth/jwt/jwksUrl'], 'a JWKS that is not http(s)')
  for (const jwt of [{ secret: 's' }, { publicKey: 'k' }, { jwksUrl: 'http://idp.local/jwks.json' }]) {
    t.same(resolveOptions({ auth: { jwt } }).auth.jwt, { ...jwt, requireExpiry: true, userIdClaim: 'sub', rolesClaim: 'roles' })
  }
  refuses(t, { bus: { provider: 'nats' } }, ['/bus/url'], 'NATS without a url')
  refuses(t, { capture: { stream: { enabled: true } } }, ['/capture/stream/url'], 'a stream without a url and no NATS bus')
  t.equal(resolveOptions({ capture: { stream: { enabled: true, url: 'nats://other:4222' } }, bus: { provider: 'nats', url: 'nats://bus:4222' } }).capture.stream.url,
    'nats://other:4222', 'a stream url of its own is kept')
})

t.test('describeOptions: one row per option, each with a type and a description', async (t) => {
  const rows = describeOptions()
  const paths = rows.map((r) => r.path)
  t.equal(new Set(paths).size, paths.length, 'no option twice')
  for (const row of rows) t.not(row.description, '', `${row.path} is described`)
  t.match(rows.find((r) => r.path === 'server.port'), { type: 'integer', default: '8080' })
  t.match(rows.find((r) => r.path === 'entities.<Type>.access'), { type: '"public" \\| "authenticated" \\| "owner" \\| "admin"', default: '' })
  t.match(rows.find((r) => r.path === 'databases[].tenant'), { type: 'string' })
  t.match(rows.find((r) => r.path === 'auth.basic.accounts[].roles'), { type: 'string[]', default: '[]' })
  t.match(rows.find((r) => r.path === 'telemetry.healthPath'), { type: 'string \\| null', default: 'null' })
  for (const parent of ['server', 'capture', 'capture.outbox', 'entities.<Type>', 'auth.jwt', 'databases[]']) {
    t.notOk(paths.includes(parent), `${parent} is a group, not an option`)
  }
  for (const key of Object.keys(resolveOptions({}).limits)) t.ok(paths.includes(`limits.${key}`), `limits.${key} has its row`)
})

t.test('optionsMarkdown: a table with a row per option, its pipes escaped', async (t) => {
  const lines = optionsMarkdown().split('\n')
  const rows = describeOptions()
  t.equal(lines.length, rows.length + 2)
  t.equal(lines[0], '| option | type | default | meaning |')
  rows.forEach((row, i) => {
    const line = lines[i + 2]
    t.ok(line.startsWith(`| \`${row.path}\` |`), row.path)
    t.equal(line.split(/(?<!\\)\|/).length, 6, `${row.path}: four cells`)
  })
})

const registry = (options: ChangefeedOptions): EntityRegistry => new EntityRegistry(resolveOptions(options))
const oneDatabase = { databases: [main] }
/** two tenants' databases, and one of no tenant with a schema of its own */
const perTenant = { databases: [red, blue, { name: 'shared', url: 'postgres://localhost/shared', schema: 'app' }] }

t.test('martenTable and dotnetShortName', async (t) => {
  t.equal(martenTable('RugbyGameState'), 'mt_doc_rugbygamestate')
  t.equal(martenTable('Ns.Team-A'), 'mt_doc_ns_team_a')
  t.equal(martenTable('Has_Underscore9'), 'mt_doc_has_underscore9')
  t.equal(dotnetShortName('Ballr.Domain.RugbyGameState, Ballr.Domain'), 'RugbyGameState')
  t.equal(dotnetShortName('Ballr.Domain.Outer+Inner, Ballr.Domain, Version=1.0.0.0'), 'Inner', 'a nested type')
  t.equal(dotnetShortName('  Team  '), 'Team')
  t.equal(dotnetShortName('Ballr.Domain.Box`1, Ballr.Domain'), null, 'a generic type has no usable short name')
  t.equal(dotnetShortName(''), null)
})

t.test('EntityRegistry: declared types: their name, Marten table, database and schema', async (t) => {
  const r = registry({
    ...oneDatabase,
    capture: { schema: 'docs' },
    entities: {
      RugbyGameState: { access: 'public', payload: 'full', feed: true },
      Team: { access: 'owner', table: 'teams', schema: 'other', ownerPath: ['owner', 'id'] }
    }
  })
  t.match(r.get('RugbyGameState'), {
    name: 'RugbyGameState', databases: ['main'], schema: 'docs', table: 'mt_doc_rugbygamestate', access: 'public', payload: 'full', feed: true, declared: true, tenancy: 'none'
  }, 'the only database; capture.schema; Marten naming')
  t.match(r.get('Team'), { table: 'teams', schema: 'other', payload: 'minimal', feed: false, ownerPath: ['owner', 'id'] })
  t.equal(r.forTable('main', 'other', 'teams')?.name, 'Team')
  t.equal(r.forTable('main', 'docs', 'teams'), undefined, 'the schema is part of the table')
  t.equal(r.forTable('other', 'other', 'teams'), undefined, 'and the database')
  t.same(r.declaredIn('main').map((e) => e.name), ['RugbyGameState', 'Team'])
  t.same(r.declaredIn('nowhere'), [])
})

t.test('EntityRegistry: a database\'s schema is its types\' default schema', async (t) => {
  const r = registry({ ...perTenant, entities: { Order: { access: 'public', database: 'shared' }, Draft: { access: 'public', database: 'shared', schema: 'drafts' } } })
  t.equal(r.get('Order')?.schema, 'app')
  t.equal(r.get('Draft')?.schema, 'drafts')
  t.equal(r.schemaOf('red_db'), 'public', 'no schema of its own: capture.schema')
  t.equal(r.schemaOf(undefined), 'public')
})

t.test('EntityRegistry: lookup: declared names exactly, discovered names in any letter case', async (t) => {
  const r = registry({ ...oneDatabase, entities: { Team: { access: 'public' } }, discovery: { access: 'authenticated' } })
  r.discover('main', 'public', 'mt_doc_rugbygamestate', 'Ballr.RugbyGameState, Ballr', false)
  t.equal(r.get('Team')?.name, 'Team')
  t.equal(r.get('team'), undefined, 'a declared type answers to its own spelling only')
  t.equal(r.get('rugbygamestate')?.name, 'RugbyGameState', 'Marten lowercases table names')
  t.equal(r.get('RUGBYGAMESTATE')?.name, 'RugbyGameState')
  t.equal(r.get('Player'), undefined)
})

t.test('EntityRegistry: discovery: the .NET short name, else the table; its access and payload; nothing for known tables', async (t) => {
  const r = registry({ ...oneDatabase, entities: { Team: { access: 'public' } }, discovery: { access: 'admin', payload: 'full' } })
  const found = r.discover('main', 'public', 'mt_doc_rugbygamestate', 'Ballr.Domain.RugbyGameState, Ballr.Domain', false)
  t.match(found, { name: 'RugbyGameState', databases: ['main'], schema: 'public', table: 'mt_doc_rugbygamestate', access: 'admin', payload: 'full', feed: false, declared: false, tenancy: 'none' })
  t.equal(r.discover('main', 'public', 'mt_doc_rugbygamestate', null, false), undefined, 'the same table again')
  t.equal(r.discover('main', 'public', 'mt_doc_team', null, false), undefined, 'a declared type\'s table')
  t.equal(r.discover('main', 'public', 'mt_doc_player', null, true)?.name, 'player', 'no .NET type: the table without the prefix')
  t.equal(r.get('player')?.tenancy, 'conjoined', 'a tenant_id column')
  t.equal(r.discover('main', 'public', 'mt_doc_squad', 'List`1[[X]], mscorlib', false)?.name, 'squad', 'an unusable .NET name: the table')
  t.equal(r.discover('main', 'archive', 'mt_doc_rugbygamestate', 'Ballr.Domain.RugbyGameState, Ballr.Domain', false), undefined,
    'another table of a known name (a subclass stored apart, another schema) is not a second type')
  t.equal(r.forTable('main', 'archive', 'mt_doc_rugbygamestate'), undefined)
  t.equal(r.discover('main', 'public', 'mt_doc_team_copy', 'Ballr.Team, Ballr', false), undefined, 'nor is a table named like a declared type')
  t.same(r.all().map((e) => e.name), ['Team', 'RugbyGameState', 'player', 'squad'])
})

t.test('EntityRegistry: discovery disabled, or without an access rule', async (t) => {
  const off = registry({ ...oneDatabase, discovery: { enabled: false } })
  t.equal(off.discover('main', 'public', 'mt_doc_team', null, false), undefined)
  t.equal(off.all().length, 0)
  const closed = registry(oneDatabase)
  t.equal(closed.discover('main', 'public', 'mt_doc_team', null, false)?.access, null, 'known, but nobody may subscribe')
  t.equal(closed.get('team')?.payload, 'minimal')
})

t.test('EntityRegistry: tenancy: none, conjoined (declared, or a tenant_id column found later), database', async (t) => {
  const r = registry({
    ...perTenant,
    entities: {
      Plain: { access: 'public', database: 'shared' },
      Published: { access: 'public', database: 'shared', tenanted: true },
      User: { access: 'public', database: ['red_db', 'blue_db'] },
      RedOnly: { access: 'public', database: 'red_db' }
    }
  })
  t.equal(r.get('Plain')?.tenancy, 'none')
  t.equal(r.get('Published')?.tenancy, 'conjoined')
  t.equal(r.get('User')?.tenancy, 'database')
  t.equal(r.get('RedOnly')?.tenancy, 'database', 'one tenant\'s database')
  const plain = r.get('Plain')!
  r.markConjoined(plain)
  t.equal(plain.tenancy, 'conjoined')
  const user = r.get('User')!
  r.markConjoined(user)
  t.equal(user.tenancy, 'database', 'database tenancy stays')
  t.equal(r.tenantOfDatabase('red_db'), 'red')
  t.equal(r.tenantOfDatabase('shared'), null)
})

t.test('databaseFor: a tenant\'s own database, else the type\'s only one', async (t) => {
  const r = registry({ ...perTenant, entities: { User: { access: 'public', database: ['red_db', 'blue_db'] }, Order: { access: 'public', database: 'shared', tenanted: true } } })
  const user = r.get('User')!
  t.equal(r.databaseFor(user, 'red'), 'red_db')
  t.equal(r.databaseFor(user, 'blue'), 'blue_db')
  t.equal(r.databaseFor(user, 'green'), undefined, 'no database of that tenant')
  t.equal(r.databaseFor(user, null), undefined)
  t.equal(r.databaseFor(r.get('Order')!, 'red'), 'shared', 'conjoined: every tenant in one database')
  t.equal(r.databaseFor(r.get('Order')!, null), 'shared')
})

t.test('EntityRegistry: database per tenant: a table discovered in each tenant\'s database is one type', async (t) => {
  const r = registry({ ...perTenant, discovery: { access: 'public' } })
  const user = r.discover('red_db', 'public', 'mt_doc_user', 'App.User, App', false)
  t.match(user, { name: 'User', databases: ['red_db'], tenancy: 'database' })
  t.equal(r.discover('blue_db', 'public', 'mt_doc_user', 'App.User, App', false), undefined, 'not new')
  t.same(user?.databases, ['red_db', 'blue_db'], 'the second tenant\'s database joined it')
  t.equal(r.forTable('blue_db', 'public', 'mt_doc_user'), user)
  t.equal(r.databaseFor(user!, 'blue'), 'blue_db')
  r.discover('shared', 'app', 'mt_doc_user', 'App.User, App', false)
  t.same(user?.databases, ['red_db', 'blue_db'], 'a database without a tenant does not join it')
  r.discover('blue_db', 'other', 'mt_doc_user', 'App.User, App', false)
  t.same(user?.databases, ['red_db', 'blue_db'], 'nor another schema')
  t.equal(r.all().length, 1)
})

t.test('forStream: the types map, then a declared name ignoring case and separators, untypedAs for none', async (t) => {
  const options: ChangefeedOptions = {
    ...oneDatabase,
    entities: { RugbyGameState: { access: 'public' }, Match: { access: 'public' } },
    capture: { events: { types: { 'legacy-game': 'Match', 'to-nowhere': 'Missing' }, untypedAs: 'Match' } },
    discovery: { access: 'public' }
  }
  const r = registry(options)
  r.discover('main', 'public', 'mt_doc_player', 'App.Player, App', false)
  t.equal(r.forStream('legacy-game')?.name, 'Match', 'mapped')
  t.equal(r.forStream('to-nowhere'), undefined, 'mapped to a name that is not a type')
  t.equal(r.forStream('rugby_game_state')?.name, 'RugbyGameState', 'Marten\'s snake-cased aggregate name')
  t.equal(r.forStream('Ballr.Domain.RugbyGameState, Ballr.Domain')?.name, 'RugbyGameState', 'a .NET type name')
  t.equal(r.forStream('RUGBY-GAME-STATE')?.name, 'RugbyGameState')
  t.equal(r.forStream('player'), undefined, 'discovered types are not stream aggregates')
  t.equal(r.forStream('unknown'), undefined)
  t.equal(r.forStream(null)?.name, 'Match', 'untypedAs')
  t.equal(r.forStream(undefined)?.name, 'Match')
  t.equal(registry({ ...oneDatabase, entities: { Match: { access: 'public' } } }).forStream(null), undefined, 'without untypedAs')
})

t.test('inlineTables: the full types of a database and schema', async (t) => {
  const r = registry({
    ...perTenant,
    entities: {
      Order: { access: 'public', database: 'shared', payload: 'full' },
      Note: { access: 'public', database: 'shared' },
      Draft: { access: 'public', database: 'shared', schema: 'drafts', payload: 'full' },
      User: { access: 'public', database: ['red_db', 'blue_db'], payload: 'full' }
    },
    discovery: { access: 'public', payload: 'full' }
  })
  r.discover('shared', 'app', 'mt_doc_invoice', null, false)
  t.same(r.inlineTables('shared', 'app'), ['mt_doc_order', 'mt_doc_invoice'], 'declared and discovered, minimal ones left out')
  t.same(r.inlineTables('shared', 'drafts'), ['mt_doc_draft'])
  t.same(r.inlineTables('red_db', 'public'), ['mt_doc_user'])
  t.same(r.inlineTables('blue_db', 'public'), ['mt_doc_user'])
  t.same(r.inlineTables('red_db', 'app'), [])
})

t.test('jsonErrorAt: the line and column of the first JSON syntax error, and what is found there', async (t) => {
  const cases: Array<[string, { line: number, column: number, found: string }]> = [
    ['{ "server": ', { line: 1, column: 13, found: '' }],
    ['{\n  "a": 1,\n}', { line: 3, column: 1, found: '}' }],
    ['{\n  "a": tru }', { line: 2, column: 8, found: 't' }],
    ['{\n  "a": "x\ny"\n}', { line: 2, column: 10, found: '\n' }],
    ['{ "a" 1 }', { line: 1, column: 7, found: '1' }],
    ['{ "a": [1, 2,, 3] }', { line: 1, column: 14, found: ',' }],
    ['{ "a": "\\q" }', { line: 1, column: 10, found: 'q' }],
    ['{ "a": 1 } x', { line: 1, column: 12, found: 'x' }],
    ['', { line: 1, column: 1, found: '' }]
  ]
  for (const [text, expected] of cases) {
    t.throws(() => JSON.parse(text), SyntaxError, `not JSON: ${JSON.stringify(text)}`)
    t.same(jsonErrorAt(text), expected, JSON.stringify(text))
  }
})

t.test('applyEnvironment: PORT that is not a port number is refused, naming the variable', async (t) => {
  t.match(applyEnvironment({}, { PORT: '9000' }), { server: { port: 9000 } })
  for (const port of ['abc', '80.5', '-1', '70000', ' ']) {
    t.throws(() => applyEnvironment({}, { PORT: port }), { code: 'CHANGEFEED_INVALID_OPTIONS', message: /PORT/ }, JSON.stringify(port))
  }
})
