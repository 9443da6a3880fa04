/**
 * The entity registry's tenancy, as the database says it: types fed by every tenant's database (those found while
 * running too, and no longer once gone), aggregates of an event store of tenants, tables dropped, tables under
 * row-level security.
 */
import t from 'tap'
import { EntityRegistry } from '../../lib/entities.js'
import { resolveOptions } from '../../lib/options.js'

const registryOf = (options: object): EntityRegistry => new EntityRegistry(resolveOptions(options))

t.test('a type that names no database is fed by every tenant\'s database, one found while running too', async (t) => {
  const registry = registryOf({
    databases: [{ name: 'master', url: 'postgres://h/master', tenantRegistry: true }, { name: 'red', url: 'postgres://h/red', tenant: 'Red' }],
    entities: { Squad: { access: 'public' }, Team: { access: 'public', database: 'master' } }
  })
  const squad = registry.get('Squad')
  t.match(squad, { tenancy: 'database', databases: ['red'], fedByTenants: true })
  registry.addTenantDatabase('master/Blue', 'Blue')
  t.same(squad?.databases, ['red', 'master/Blue'])
  t.equal(registry.databaseFor(squad!, 'Blue'), 'master/Blue')
  t.equal(registry.forTable('master/Blue', 'public', 'mt_doc_squad'), squad)
  t.same(registry.get('Team')?.databases, ['master'], 'a type that names its database keeps it')
  t.equal(registry.discover('master/Blue', 'public', 'mt_doc_player', null, false)?.tenancy, 'database', 'discovered there: of the tenant')
  registry.removeDatabase('master/Blue')
  t.same(squad?.databases, ['red'])
  t.equal(registry.tenantOfDatabase('master/Blue'), null)
  t.equal(registry.get('player'), undefined, 'a discovered type fed by nothing else is gone')
})

t.test('an aggregate of an event store of tenants is tenanted, unless its table says otherwise or it is declared not to be', async (t) => {
  const registry = registryOf({
    databases: [{ name: 'main', url: 'postgres://h/main' }],
    entities: { Match: { access: 'public' }, Ticker: { access: 'public', tenanted: false } },
    capture: { events: { enabled: true } }
  })
  const [match, ticker] = [registry.get('Match')!, registry.get('Ticker')!]
  registry.eventStoreFound('main', { tenanted: true, tableless: [match, ticker] })
  t.equal(match.tenancy, 'conjoined')
  t.equal(ticker.tenancy, 'none', 'declared tenanted: false')
  t.ok(registry.hasTenantedEventStore('main'))
  t.same(registry.aggregatesIn('main').map((e) => e.name), ['Match', 'Ticker'], 'both fed by the event store')
  t.equal(registry.tableFound(match, { tenantColumn: false }), true, 'its table, made later, has no tenant_id')
  t.equal(match.tenancy, 'none')
  t.equal(registry.tableFound(match, { tenantColumn: true }), false)
  t.equal(match.tenancy, 'conjoined', 'a tenant_id column: tenanted, always')
})

t.test('a dropped table: a discovered type forgotten, a declared one kept; row-level security per table', async (t) => {
  const registry = registryOf({ databases: [{ name: 'main', url: 'postgres://h/main' }], entities: { Team: { access: 'public' } }, discovery: { access: 'public' } })
  const found = registry.discover('main', 'public', 'mt_doc_fixture', null, false)!
  registry.readAs('main', 'public', 'mt_doc_fixture', 'app.tenant_id')
  t.equal(registry.settingOf('main', found), 'app.tenant_id')
  registry.forget('main', found)
  t.equal(registry.get('fixture'), undefined)
  t.equal(registry.settingOf('main', found), null)
  registry.forget('main', registry.get('Team')!)
  t.equal(registry.forTable('main', 'public', 'mt_doc_team')?.name, 'Team', 'declared: still known by its table')
})
