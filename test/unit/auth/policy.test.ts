/**
 * The access policy without a database (owner types with an ownerPath read the document: integration tests cover
 * them): the tenant a request is scoped to, and who may watch public, authenticated, admin and owner-by-id types and
 * feeds, with the tenancy rules of the README's "Tenants" paragraph.
 */
import t from 'tap'
import { AccessPolicy, type AuthorizeContext, type PolicyOptions } from '../../../lib/auth/policy.js'
import { ANONYMOUS, sameIdentity, type Principal } from '../../../lib/auth/principal.js'
import { EntityRegistry, type EntityType } from '../../../lib/entities.js'
import { resolveOptions } from '../../../lib/options.js'
import { WireError } from '../../../lib/errors.js'

const registry = new EntityRegistry(resolveOptions({
  databases: [
    { name: 'shared', url: 'postgres://localhost/shared' },
    { name: 'red_db', url: 'postgres://localhost/red', tenant: 'red' },
    { name: 'blue_db', url: 'postgres://localhost/blue', tenant: 'blue' }
  ],
  entities: {
    Score: { access: 'public', database: 'shared', feed: true },
    Note: { access: 'authenticated', database: 'shared', feed: true },
    Audit: { access: 'admin', database: 'shared', feed: true },
    Profile: { access: 'owner', database: 'shared' },
    Squad: { access: 'public', database: 'shared', tenanted: true, feed: true },
    Order: { access: 'authenticated', database: 'shared', tenanted: true, feed: true },
    Wallet: { access: 'owner', database: 'shared', tenanted: true },
    User: { access: 'authenticated', database: ['red_db', 'blue_db'] },
    Plain: { access: 'public', database: 'shared' }
  }
}))
const hidden = registry.discover('shared', 'public', 'mt_doc_hidden', null, false)!
const type = (name: string): EntityType => registry.get(name)!

const user = (userId: string | null, tenantId: string | null = null, roles: string[] = []): Principal => ({ kind: 'user', userId, roles, tenantId, expiresAt: null })
const redUser = user('u1', 'red')
const plainUser = user('u1')
const redAdmin = user('a1', 'red', ['Admin'])

function policy (options: Partial<PolicyOptions> = {}): AccessPolicy {
  return new AccessPolicy(new Map(), registry, { adminRoles: ['Admin', 'Ops'], anonymousAllowed: true, tenantClaim: true, ...options })
}

/** A scope without its denial's reason (tests assert codes, not text). */
const outcome = (scope: ReturnType<AccessPolicy['scope']>): object => 'code' in scope ? { code: scope.code } : scope

t.test('sameIdentity: kind, user, tenant and roles (in any order); not the expiry', async (t) => {
  const base: Principal = { kind: 'user', userId: 'u1', roles: ['Member', 'Coach'], tenantId: 'red', expiresAt: 1 }
  t.ok(sameIdentity(base, { ...base, roles: ['Coach', 'Member'], expiresAt: 2 }), 'a refresh that only moves the expiry')
  for (const [what, other] of [
    ['another user', { ...base, userId: 'u2' }],
    ['another tenant', { ...base, tenantId: null }],
    ['a role less', { ...base, roles: ['Member'] }],
    ['a role more', { ...base, roles: ['Member', 'Coach', 'Admin'] }],
    ['a role replaced', { ...base, roles: ['Member', 'Admin'] }],
    ['a service account of that name', { ...base, kind: 'service' }]
  ] as const) t.notOk(sameIdentity(base, other as Principal), what)
})

t.test('isAdmin: any of the admin roles', async (t) => {
  const p = policy()
  t.equal(p.isAdmin(user('x', null, ['Member', 'Ops'])), true)
  t.equal(p.isAdmin(user('x', null, ['admin'])), false, 'roles match exactly')
  t.equal(p.isAdmin(ANONYMOUS), false)
})

t.test('scope: an untenanted type takes no tenant', async (t) => {
  const p = policy()
  t.same(p.scope(type('Score'), undefined, redUser), { tenantId: null })
  t.same(outcome(p.scope(type('Score'), 'red', redUser)), { code: WireError.badRequest })
  t.same(outcome(p.scope(type('Score'), 'red', redAdmin)), { code: WireError.badRequest }, 'not even for an admin')
})

t.test('scope: a tenant\'s user watches its own tenant; admins, anonymous and tenantless principals choose', async (t) => {
  const p = policy()
  const squad = type('Squad')
  const cases: Array<[string, Principal, string | undefined, object]> = [
    ['a tenant\'s user, no tenant named: its own', redUser, undefined, { tenantId: 'red' }],
    ['a tenant\'s user naming its own', redUser, 'red', { tenantId: 'red' }],
    ['a tenant\'s user naming another', redUser, 'blue', { code: WireError.forbidden }],
    ['an admin, no tenant named: every tenant', redAdmin, undefined, { tenantId: null }],
    ['an admin naming another tenant', redAdmin, 'blue', { tenantId: 'blue' }],
    ['anonymous: every tenant', ANONYMOUS, undefined, { tenantId: null }],
    ['anonymous naming one', ANONYMOUS, 'blue', { tenantId: 'blue' }],
    ['a user without a tenant: every tenant', plainUser, undefined, { tenantId: null }],
    ['a user without a tenant naming one', plainUser, 'blue', { tenantId: 'blue' }],
    ['any tenant of a conjoined type, even one nobody has', plainUser, 'green', { tenantId: 'green' }]
  ]
  for (const [what, principal, requested, expected] of cases) t.same(outcome(p.scope(squad, requested, principal)), expected, what)
})

t.test('scope: database tenancy needs a database of the named tenant', async (t) => {
  const p = policy()
  t.same(p.scope(type('User'), 'blue', redAdmin), { tenantId: 'blue' })
  t.same(outcome(p.scope(type('User'), 'green', redAdmin)), { code: WireError.badRequest })
  t.same(p.scope(type('User'), undefined, redUser), { tenantId: 'red' })
  t.same(outcome(p.scope(type('User'), 'blue', redUser)), { code: WireError.forbidden }, 'another tenant: forbidden before the database is looked up')
})

t.test('scope: who may not watch the type learns nothing of its tenants (access is decided first)', async (t) => {
  const p = policy()
  const user = type('User')
  const cases: Array<[string, Principal, AccessPolicy]> = [
    ['anonymous, authenticated type', ANONYMOUS, p],
    ['a user without a tenant where tokens carry them', plainUser, p],
    ['anonymous where sign-in is required', ANONYMOUS, policy({ anonymousAllowed: false })]
  ]
  for (const [what, principal, rules] of cases) {
    const known = rules.scope(user, 'blue', principal)
    t.ok('code' in known, `${what}: refused`)
    t.same(rules.scope(user, 'green', principal), known, `${what}: a tenant without a database is answered the same`)
  }
  const audit = registry.get('Audit')!
  t.same(p.scope(audit, 'red', redUser), p.scope(audit, undefined, redUser), 'an admin type: the same denial whatever the request names')
  t.same(outcome(p.scope(type('User'), 'green', plainUser)), { code: WireError.forbidden })
  t.same(outcome(policy({ tenantClaim: false }).scope(type('User'), 'green', plainUser)), { code: WireError.badRequest }, 'who may name tenants learns that one has no database')
})

/** The denial's code, or 'allowed'. */
async function verdict (p: AccessPolicy, name: string, entityId: string, tenantId: string | null, principal: Principal): Promise<string> {
  const entity = name === 'hidden' ? hidden : type(name)
  return (await p.check(entity, entityId, tenantId, principal))?.code ?? 'allowed'
}

t.test('access kinds of untenanted types', async (t) => {
  const p = policy()
  const cases: Array<[string, string, Principal, string]> = [
    ['Score', 'anonymous, public', ANONYMOUS, 'allowed'],
    ['Note', 'anonymous, authenticated', ANONYMOUS, WireError.unauthenticated],
    ['Audit', 'anonymous, admin', ANONYMOUS, WireError.unauthenticated],
    ['Profile', 'anonymous, owner', ANONYMOUS, WireError.unauthenticated],
    ['Note', 'a user, authenticated', plainUser, 'allowed'],
    ['Audit', 'a user, admin', plainUser, WireError.forbidden],
    ['Audit', 'an admin, admin', redAdmin, 'allowed'],
    ['Profile', 'a user, its own profile', user('p1'), 'allowed'],
    ['Profile', 'a user, another\'s profile', user('p2'), WireError.forbidden],
    ['Profile', 'a principal without a user id', user(null), WireError.forbidden],
    ['Profile', 'an admin, another\'s profile', redAdmin, 'allowed'],
    ['hidden', 'a discovered type without access', redAdmin, WireError.forbidden]
  ]
  for (const [name, what, principal, expected] of cases) t.equal(await verdict(p, name, 'p1', null, principal), expected, what)
  t.equal(await verdict(policy({ anonymousAllowed: false }), 'Score', '1', null, ANONYMOUS), WireError.unauthenticated, 'anonymous sockets disabled: not even public types')
  t.equal(await verdict(policy({ anonymousAllowed: false }), 'Score', '1', null, plainUser), 'allowed')
})

t.test('tenanted types: every tenant\'s entity only for public types, admins, or without a tenant claim', async (t) => {
  const p = policy()
  const cases: Array<[string, string | null, Principal, string, string]> = [
    ['Squad', null, ANONYMOUS, 'allowed', 'public, every tenant, anonymous'],
    ['Order', null, plainUser, WireError.forbidden, 'a token without the tenant claim: not every tenant\'s non-public entity'],
    ['Order', 'blue', plainUser, WireError.forbidden, 'nor one tenant\'s, by naming it'],
    ['User', 'blue', plainUser, WireError.forbidden, 'nor a tenant database\'s'],
    ['Order', 'blue', { ...plainUser, kind: 'service' }, WireError.forbidden, 'a service account without a tenant is like such a user'],
    ['Squad', 'blue', plainUser, 'allowed', 'a public type: any tenant\'s'],
    ['Order', null, redAdmin, 'allowed', 'an admin: every tenant'],
    ['Order', 'red', redUser, 'allowed', 'its own tenant (the scope has checked it)'],
    ['Wallet', 'red', user('w1', 'red'), 'allowed', 'an owner, within its tenant'],
    ['Wallet', 'red', user('w2', 'red'), WireError.forbidden, 'not the owner'],
    ['Wallet', null, plainUser, WireError.forbidden, 'owned, every tenant, no tenant claim in the token']
  ]
  for (const [name, tenantId, principal, expected, what] of cases) t.equal(await verdict(p, name, 'w1', tenantId, principal), expected, what)

  const noClaim = policy({ tenantClaim: false })
  t.equal(await verdict(noClaim, 'Order', 'w1', null, plainUser), 'allowed', 'no tenant claim configured: the access kind alone decides')
  t.equal(await verdict(noClaim, 'Order', 'w1', 'blue', plainUser), 'allowed')
  t.equal(await verdict(noClaim, 'Wallet', 'w1', null, user('w1')), WireError.badRequest, 'but an owned entity must be named with its tenant')
  t.equal(await verdict(noClaim, 'Wallet', 'w1', 'red', user('w1')), 'allowed')
})

t.test('feeds: only where every entity may be viewed (public types, admins)', async (t) => {
  const p = policy()
  const cases: Array<[string, string | null, Principal, string, string]> = [
    ['Score', null, ANONYMOUS, 'allowed', 'a public feed'],
    ['Note', null, plainUser, WireError.forbidden, 'an authenticated type\'s feed'],
    ['Note', null, redAdmin, 'allowed', 'an admin'],
    ['Audit', null, redAdmin, 'allowed', 'an admin type\'s feed, for an admin'],
    ['Plain', null, redAdmin, WireError.forbidden, 'feed not enabled, even for an admin'],
    ['Profile', null, redAdmin, WireError.forbidden, 'feed not enabled'],
    ['Squad', 'red', ANONYMOUS, 'allowed', 'one tenant\'s public feed'],
    ['Squad', null, ANONYMOUS, 'allowed', 'every tenant\'s public feed'],
    ['Order', 'red', redUser, WireError.forbidden, 'a tenant\'s authenticated feed: still not every entity is the user\'s to see'],
    ['Order', null, plainUser, WireError.forbidden, 'no tenant in the token'],
    ['Squad', 'blue', plainUser, 'allowed', 'a public feed of a named tenant, no tenant in the token'],
    ['Order', null, redAdmin, 'allowed', 'every tenant\'s, for an admin']
  ]
  for (const [name, tenantId, principal, expected, what] of cases) t.equal(await verdict(p, name, '*', tenantId, principal), expected, what)
})

t.test('a host\'s authorize runs after the access kind allowed, with the scope it decided', async (t) => {
  const seen: AuthorizeContext[] = []
  const p = policy({ authorize: async (ctx) => { seen.push(ctx); return ctx.entityId !== 'vip' } })
  t.equal(await verdict(p, 'Squad', '1', 'red', redUser), 'allowed')
  t.equal(await verdict(p, 'Squad', 'vip', 'red', redUser), WireError.forbidden, 'false: forbidden')
  t.equal(await verdict(p, 'Audit', '1', null, plainUser), WireError.forbidden)
  t.equal(await verdict(p, 'Note', '1', null, ANONYMOUS), WireError.unauthenticated)
  t.equal(seen.length, 2, 'not asked about what the access kind refused')
  t.match(seen[0], { entityType: 'Squad', entityId: '1', tenantId: 'red', entity: type('Squad'), principal: redUser })
  t.equal(await verdict(policy({ authorize: () => true }), 'Score', '1', null, ANONYMOUS), 'allowed', 'a synchronous rule')
})
