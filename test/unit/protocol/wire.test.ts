/**
 * What travels, without a socket or a broker: an entity's bus channels and the order a change is published in; the
 * bus envelope (every header field survives wrap → unwrap, malformed messages unwrap to null); and the wire protocol
 * (subscriptionIds both ways, the encoders' field rules, the compiled validators of client messages: lengths,
 * patterns, control characters, unknown fields).
 */
import t from 'tap'
import { FEED, channelOf, channelsOf } from '../../../lib/route/channels.js'
import type { EntityType } from '../../../lib/entities.js'
import { unwrap, wrap, wrapResync, type Envelope as BusEnvelope } from '../../../lib/route/envelope.js'
import {
  Envelope, RequestData, encodeAuthenticated, encodeError, encodeNotification, encodePong, encodeResync, encodeSubscribed,
  encodeSubscriptionError, encodeUnsubscribed, forSubscription, mergeNotifications, parseSubscriptionId, subscriptionIdOf,
  type ChangeTypeName
} from '../../../lib/protocol/index.js'
import { WireError } from '../../../lib/errors.js'

const entity = (feed: boolean): EntityType => ({
  name: 'Team', databases: ['main'], schema: 'public', table: 'mt_doc_team', access: 'public', payload: 'minimal', feed, declared: true, tenancy: 'conjoined'
})

t.test('channelOf: <prefix>:<Type>:<id>, a tenant as @<tenant, URI-encoded>', async (t) => {
  t.equal(channelOf('cf', 'Team', '42'), 'cf:Team:42')
  t.equal(channelOf('cf', 'Team', '42', null), 'cf:Team:42')
  t.equal(channelOf('cf', 'Team', 'a:b@c'), 'cf:Team:a:b@c', 'entity ids are taken as they are: they come last')
  t.equal(channelOf('cf', 'Team', '42', 'red'), 'cf:Team@red:42')
  t.equal(channelOf('cf', 'Team', '42', 'a:b@c d'), 'cf:Team@a%3Ab%40c%20d:42', 'a tenant holds no raw ":" or "@"')
  t.equal(channelOf('cf', 'Team', FEED, 'red'), 'cf:Team@red:*')
  t.not(channelOf('cf', 'Team', '1:2', 'x'), channelOf('cf', 'Team', '2', 'x:1'), 'a tenant with ":" is not confused with an id')
})

t.test('channelsOf: the entity\'s own channel first, then every tenant\'s, then the feeds', async (t) => {
  t.same(channelsOf('cf', entity(false), '42', null), ['cf:Team:42'], 'untenanted, no feed')
  t.same(channelsOf('cf', entity(true), '42', null), ['cf:Team:42', 'cf:Team:*'], 'untenanted feed type')
  t.same(channelsOf('cf', entity(false), '42', 'red'), ['cf:Team@red:42', 'cf:Team:42'], 'tenanted')
  t.same(channelsOf('cf', entity(true), '42', 'red'), ['cf:Team@red:42', 'cf:Team:42', 'cf:Team@red:*', 'cf:Team:*'],
    'tenanted feed type: the tenant\'s channels before every tenant\'s, entity before feed')
  t.equal(new Set(channelsOf('cf', entity(true), '42', 'red')).size, 4, 'no channel twice')
})

/** a notification frame: JSON, so its newlines are escaped */
const notificationFrame = JSON.stringify({ type: 'notification', data: { entityType: 'Team', entityId: 'a b', payload: { text: 'line 1\nline 2 %' } } })

t.test('bus envelope: every header field round-trips', async (t) => {
  const traceparents = [null, '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01']
  const positions = [null, '0000abcd:5', 'n:12', 'p:instance-1:3']
  const tenants = [null, 'red', 'a b', '100%', 'x:y@z/é', 'a\nb']
  const owners: Array<string | null | undefined> = [undefined, null, 'user 1', '50% off', 'o', 'o:x', '', ' ']
  let cases = 0
  for (const traceparent of traceparents) {
    for (const position of positions) {
      for (const tenantId of tenants) {
        for (const owner of owners) {
          const envelope: BusEnvelope & { payloadType: 'full' } = { kind: 'notification', ts: 1712345678901, payloadType: 'full', traceparent, position, tenantId, frame: notificationFrame }
          if (owner !== undefined) envelope.owner = owner
          const back = unwrap(wrap(envelope))
          if (!t.same(back, envelope, JSON.stringify({ traceparent, position, tenantId, owner }))) return
          cases++
        }
      }
    }
  }
  t.equal(cases, traceparents.length * positions.length * tenants.length * owners.length)
})

t.test('bus envelope: the header is one line of space-separated fields after the version and kind, the frame follows unchanged', async (t) => {
  const message = wrap({ ts: 5, payloadType: 'minimal', tenantId: 'a b', owner: 'u 1', frame: notificationFrame })
  t.equal(message, `cf1 n 5 minimal - - a%20b o:u%201\n${notificationFrame}`)
  t.equal(wrapResync('{}', 5), 'cf1 r 5 - - - -\n{}', 'a resync: fields left out are "-"; no owner field')
  t.same(unwrap(wrapResync('{}', 5)), { kind: 'resync', ts: 5, payloadType: null, traceparent: null, position: null, tenantId: null, frame: '{}' })
  t.equal(wrap({ ts: 5, payloadType: 'full', owner: null, frame: '{}' }), 'cf1 n 5 full - - - o\n{}', 'an owner type without an owner')
  t.equal(unwrap('cf1 n 5 full - - -\n')?.frame, '', 'an empty frame')
  t.equal(unwrap('cf1 n 5 full - - -\n{"a":"\\n"}\nmore')?.frame, '{"a":"\\n"}\nmore', 'only the first newline ends the header')
})

t.test('bus envelope: a delta type\'s change carries its patch frame after the full one, and the patch\'s base', async (t) => {
  const patchFrame = JSON.stringify({ type: 'notification', data: { payloadType: 'delta', patch: [{ op: 'replace', path: '/text', value: 'a\nb' }] } })
  for (const base of ['n:12', '0000abcd:5', 'p:a b%:1']) {
    for (const owner of [undefined, null, 'u 1']) {
      const envelope: BusEnvelope & { payloadType: 'delta' } = { kind: 'notification', ts: 5, payloadType: 'delta', traceparent: null, position: 'n:13', tenantId: 'red', frame: notificationFrame, delta: { frame: patchFrame, base } }
      if (owner !== undefined) envelope.owner = owner
      t.same(unwrap(wrap(envelope)), envelope, JSON.stringify({ base, owner }))
    }
  }
  t.equal(wrap({ ts: 5, payloadType: 'delta', position: 'n:2', frame: '{}', delta: { frame: '[]', base: 'n:1' } }), 'cf1 n 5 delta - n:2 - b:n%3A1\n{}\n[]')
  t.same(unwrap('cf1 n 5 delta - n:2 - b:n%3A1\n{}'), { kind: 'notification', ts: 5, payloadType: 'delta', traceparent: null, position: 'n:2', tenantId: null, frame: '{}' },
    'a base without a second frame: no patch')
})

t.test('bus envelope: malformed messages, and messages of another layout', async (t) => {
  t.equal(unwrap(''), null)
  t.equal(unwrap('cf1 n 5 full - - - {"no":"newline"}'), null, 'no header line')
  t.equal(unwrap('5 full - - -\n{}'), null, 'the layout before the version token')
  t.equal(unwrap('cf2 n 5 full - - -\n{}'), null, 'another version')
  t.equal(unwrap('cf1 x 5 full - - -\n{}'), null, 'an unknown kind')
  t.match(unwrap('cf1 n 5 full\n{}'), { ts: 5, payloadType: 'full', traceparent: null, position: null, tenantId: null, frame: '{}' },
    'a shorter header: the missing fields are none')
  t.ok(Number.isNaN(unwrap('cf1 n soon full - - -\n{}')?.ts), 'a time that is not a number')
  for (const header of ['cf1 n 5 full - - %E0%A4%A', 'cf1 n 5 full - - - o:%', 'cf1 n 5 full - - % o:%ZZ']) {
    t.equal(unwrap(`${header}\n{}`), null, `undecodable percent-encoding (${header}) is malformed, not a throw`)
  }
})

const json = (frame: string): any => JSON.parse(frame)

t.test('subscriptionIdOf and parseSubscriptionId are inverse for every id a request may carry', async (t) => {
  const types = ['Team', '_t', 'Ns.Team_2']
  const ids = ['42', '*', 'a:b', 'a@b', 'x y', '%41', 'é', 'line\nbreak']
  const tenants = [undefined, 'red', 'a@b', 'a b', '%41', '-']
  for (const entityType of types) {
    for (const entityId of ids) {
      for (const tenantId of tenants) {
        const id = subscriptionIdOf(entityType, entityId, tenantId)
        const expected = tenantId === undefined ? { entityType, entityId } : { entityType, entityId, tenantId }
        t.same(parseSubscriptionId(id), expected, id)
        if (tenantId !== undefined) t.ok(RequestData.subscribe.Check({ entityType, entityId: 'x', tenantId }), `the validator lets tenant ${tenantId} through`)
      }
    }
  }
  t.equal(subscriptionIdOf('Team', '42'), 'Team:42', 'the draft client\'s form')
  t.equal(subscriptionIdOf('Team', '42', 'red'), 'Team@red:42')
})

t.test('subscriptionId: a tenant id with ":" cannot be told apart from the entity id, so requests may not name one', async (t) => {
  t.same(parseSubscriptionId(subscriptionIdOf('Team', '42', 'org:1')), { entityType: 'Team', tenantId: 'org', entityId: '1:42' },
    'the first ":" after the tenant ends it')
  t.notOk(RequestData.subscribe.Check({ entityType: 'Team', entityId: '42', tenantId: 'org:1' }))
  t.notOk(RequestData.unsubscribe.Check({ entityType: 'Team', entityId: '42', tenantId: 'org:1' }))
})

t.test('parseSubscriptionId: null for what is not one', async (t) => {
  for (const id of ['', 'Team', 'Team:', ':42', '1Team:42', 'Te-am:42', 'Team@:42', '@red:42', 'Team@red', 'Team@red:']) {
    t.equal(parseSubscriptionId(id), null, JSON.stringify(id))
  }
})

t.test('encodeNotification: optional fields only when set; a payload only for full and events', async (t) => {
  const base = { entityType: 'Team', entityId: '42', changeType: 'updated' as const, ts: Date.UTC(2024, 0, 2, 3, 4, 5, 6) }
  t.same(json(encodeNotification({ ...base, payloadType: 'minimal', tenantId: null, version: null, origin: null, position: null, payload: { ignored: true } })), {
    type: 'notification',
    data: { entityType: 'Team', entityId: '42', changeType: 'updated', payloadType: 'minimal', timestamp: '2024-01-02T03:04:05.006Z' }
  }, 'minimal: no payload even when one is given; null fields left out')
  t.same(json(encodeNotification({ ...base, payloadType: 'full', tenantId: 'red', version: '7', origin: 'web', position: '0000abcd:9', payload: { n: 1 } })), {
    type: 'notification',
    data: { entityType: 'Team', entityId: '42', changeType: 'updated', payloadType: 'full', timestamp: '2024-01-02T03:04:05.006Z', tenantId: 'red', version: '7', position: '0000abcd:9', origin: 'web', payload: { n: 1 } }
  })
  t.same((json(encodeNotification({ ...base, payloadType: 'full' })) as { data: object }).data, { ...(json(encodeNotification({ ...base, payloadType: 'minimal' })) as { data: object }).data, payloadType: 'full', payload: null },
    'full without a payload (a deleted document): payload null')
  t.same((json(encodeNotification({ ...base, changeType: 'appended', payloadType: 'events', payload: [{ type: 'x', version: 1 }] })) as { data: { payload: unknown } }).data.payload, [{ type: 'x', version: 1 }])
  t.equal(encodeNotification({ ...base, payloadType: 'minimal' }), encodeNotification({ ...base, payloadType: 'minimal' }), 'the same change encodes to the same string')
})

t.test('protocol replies: with and without a request id and a tenant', async (t) => {
  t.same(json(encodeSubscribed('r1', 'Team:42', { entityType: 'Team', entityId: '42' })),
    { type: 'subscribed', id: 'r1', data: { subscriptionId: 'Team:42', entityType: 'Team', entityId: '42' } })
  t.same(json(encodeSubscribed(7, 'Team@red:42', { entityType: 'Team', entityId: '42', tenantId: 'red' }, { recovered: true })),
    { type: 'subscribed', id: 7, data: { subscriptionId: 'Team@red:42', entityType: 'Team', entityId: '42', tenantId: 'red', recovered: true } })
  t.same(json(encodeSubscribed(undefined, 'Team:42', { entityType: 'Team', entityId: '42', tenantId: null }, { recovered: false })),
    { type: 'subscribed', data: { subscriptionId: 'Team:42', entityType: 'Team', entityId: '42', recovered: false } }, 'no id, a null tenant left out')

  t.same(json(encodeSubscriptionError('r2', { entityType: 'Team', entityId: '42', tenantId: 'red' }, WireError.forbidden, 'no')),
    { type: 'subscription_error', id: 'r2', data: { entityType: 'Team', entityId: '42', tenantId: 'red', code: 'forbidden', error: 'no' } })
  t.same(json(encodeSubscriptionError(undefined, { entityType: 'Team', entityId: '42' }, WireError.unauthenticated, 'sign in')),
    { type: 'subscription_error', data: { entityType: 'Team', entityId: '42', code: 'unauthenticated', error: 'sign in' } })

  t.same(json(encodeResync('gap')), { type: 'resync', data: { reason: 'gap' } }, 'every subscription')
  t.same(json(encodeResync('gap', { entityType: 'Team', entityId: '42', tenantId: null })), { type: 'resync', data: { reason: 'gap', entityType: 'Team', entityId: '42' } })
  t.same(json(encodeResync('gap', { entityType: 'Team', entityId: '42', tenantId: 'red' })), { type: 'resync', data: { reason: 'gap', entityType: 'Team', entityId: '42', tenantId: 'red' } })

  t.same(json(encodeUnsubscribed('r3', 'Team:42')), { type: 'unsubscribed', id: 'r3', data: { subscriptionId: 'Team:42' } })
  t.same(json(encodeError(undefined, WireError.invalidJson, 'bad')), { type: 'error', data: { code: 'invalid_json', error: 'bad' } })
  t.same(json(encodeAuthenticated('a1', { userId: 'u1', roles: ['Member'], expiresAt: Date.UTC(2030, 0, 1) })),
    { type: 'authenticated', id: 'a1', data: { userId: 'u1', roles: ['Member'], expiresAt: '2030-01-01T00:00:00.000Z' } })
  t.same(json(encodeAuthenticated(undefined, { userId: null, roles: [], expiresAt: null })), { type: 'authenticated', data: { userId: null, roles: [], expiresAt: null } })
  t.same(json(encodePong(undefined)), { type: 'pong' })
  t.same(json(encodePong('p1')), { type: 'pong', id: 'p1' })
  t.same(json(encodePong(7)), { type: 'pong', id: 7 })
})

const controls = ['\u0000', '\n', '\r', '\t', '\u001f', '\u007f']

t.test('Envelope: a type of 1..32 characters, an id string ≤ 128 or integer, other fields allowed', async (t) => {
  const accepted = [{ type: 'ping' }, { type: 'x'.repeat(32), id: 'r'.repeat(128) }, { type: 'subscribe', id: -3, data: null }, { type: 'ping', newer: 'field' }]
  for (const value of accepted) t.ok(Envelope.Check(value), JSON.stringify(value))
  const refused = [null, [], 'ping', {}, { type: '' }, { type: 'x'.repeat(33) }, { type: 1 }, { type: 'ping', id: 'r'.repeat(129) }, { type: 'ping', id: 1.5 }, { type: 'ping', id: null }, { type: 'ping', id: true }]
  for (const value of refused) t.notOk(Envelope.Check(value), JSON.stringify(value))
})

t.test('RequestData.subscribe: the entity (or entityIds), an optional tenant, since, watchers, snapshot, where; nothing else', async (t) => {
  const ok = { entityType: 'Team', entityId: '42' }
  const accepted = [
    ok, { ...ok, entityId: '*' }, { entityType: 'Ns.Team_2', entityId: 'é 日本' }, { entityType: '_' + 'a'.repeat(127), entityId: 'x'.repeat(512) },
    { ...ok, tenantId: 't'.repeat(128), since: 's'.repeat(128), watchers: true }, { ...ok, since: '' }, { ...ok, snapshot: true },
    { entityType: 'Player', entityIds: ['p1', 'p2'], snapshot: true }, { entityType: 'Player', entityId: '*', where: { teamId: 'team-1', 'stats.position': ['wing', 7, true, null] } }
  ]
  for (const value of accepted) t.ok(RequestData.subscribe.Check(value), JSON.stringify(value))
  const refused: Record<string, unknown> = {
    'no entityId': { entityType: 'Team' },
    'entityId and entityIds': { ...ok, entityIds: ['1'] },
    'no entityIds': { entityType: 'Team', entityIds: [] },
    'entityIds with since': { entityType: 'Team', entityIds: ['1'], since: 'x' },
    'empty where': { ...ok, entityId: '*', where: {} },
    'where with a bad path': { ...ok, entityId: '*', where: { 'a..b': 1 } },
    'where with an object value': { ...ok, entityId: '*', where: { a: { b: 1 } } },
    'where with an empty list': { ...ok, entityId: '*', where: { a: [] } },
    'where with 9 conditions': { ...ok, entityId: '*', where: Object.fromEntries(Array.from({ length: 9 }, (_, i) => ['k' + String(i), i])) },
    'empty entityId': { ...ok, entityId: '' },
    'entityId of 513': { ...ok, entityId: 'x'.repeat(513) },
    'entityId a number': { ...ok, entityId: 42 },
    'type starting with a digit': { ...ok, entityType: '1Team' },
    'type with ":"': { ...ok, entityType: 'Te:am' },
    'type with "@"': { ...ok, entityType: 'Te@am' },
    'type of 129': { ...ok, entityType: 'T'.repeat(129) },
    'empty tenant': { ...ok, tenantId: '' },
    'tenant of 129': { ...ok, tenantId: 't'.repeat(129) },
    'since of 129': { ...ok, since: 's'.repeat(129) },
    'watchers not a boolean': { ...ok, watchers: 'yes' },
    'an unknown field': { ...ok, extra: 1 }
  }
  for (const c of controls) {
    refused[`entityId with ${JSON.stringify(c)}`] = { ...ok, entityId: `a${c}b` }
    refused[`tenantId with ${JSON.stringify(c)}`] = { ...ok, tenantId: `a${c}b` }
  }
  for (const [what, value] of Object.entries(refused)) t.notOk(RequestData.subscribe.Check(value), what)
})

t.test('RequestData.unsubscribe: a subscriptionId, or the entity, never both', async (t) => {
  const accepted = [{ subscriptionId: 'Team:42' }, { subscriptionId: 'x'.repeat(4096) }, { entityType: 'Team', entityId: '42' }, { entityType: 'Team', entityId: '42', tenantId: 'red' }]
  for (const value of accepted) t.ok(RequestData.unsubscribe.Check(value), JSON.stringify(value))
  const refused: unknown[] = [
    {}, { subscriptionId: '' }, { subscriptionId: 'x'.repeat(4097) }, { subscriptionId: 'Team:42', entityType: 'Team', entityId: '42' },
    { entityType: 'Team' }, { entityType: 'Team', entityId: '42', since: 'x' }, ...controls.map((c) => ({ subscriptionId: `Team:4${c}2` }))
  ]
  for (const value of refused) t.notOk(RequestData.unsubscribe.Check(value), JSON.stringify(value))
})

t.test('RequestData.auth: a token of 1..16384 characters', async (t) => {
  t.ok(RequestData.auth.Check({ token: 'x' }))
  t.ok(RequestData.auth.Check({ token: 'x'.repeat(16384) }))
  for (const value of [{}, { token: '' }, { token: 'x'.repeat(16385) }, { token: 1 }, { token: 'x', extra: 1 }]) {
    t.notOk(RequestData.auth.Check(value), JSON.stringify(value).slice(0, 40))
  }
})

t.test('forSubscription: the subscription\'s change type and its subscriptionId, last; the document untouched', async (t) => {
  // a document may hold a field named changeType: the frame's own comes before the payload
  const frame = encodeNotification({ entityType: 'Player', entityId: 'p1', changeType: 'updated', payloadType: 'full', ts: 0, payload: { changeType: 'updated', teamId: 't1' } })
  const tagged = forSubscription(frame, 'entered', 'Player:*{"teamId":["t1"]}')
  t.same(json(tagged), { ...json(frame), data: { ...json(frame).data, changeType: 'entered', subscriptionId: 'Player:*{"teamId":["t1"]}' } })
  t.ok(tagged.endsWith(',"subscriptionId":"Player:*{\\"teamId\\":[\\"t1\\"]}"}}'), 'the subscriptionId is the last field')
  t.same(json(tagged).data.payload, { changeType: 'updated', teamId: 't1' }, 'the document as it was')
  t.same(json(forSubscription(frame, 'updated', 'Player:*')).data.changeType, 'updated', 'the change type kept')
})

t.test('mergeNotifications: the last frame with the net change type, or nothing when they cancel out', async (t) => {
  const of = (changeType: ChangeTypeName, n: number): string => encodeNotification({ entityType: 'Team', entityId: 't1', changeType, payloadType: 'full', ts: 0, payload: { n, changeType: 'deleted' } })
  t.equal(mergeNotifications(of('created', 1), of('deleted', 2)), null, 'created, then deleted: the client never knew it')
  t.equal(mergeNotifications(of('updated', 1), of('updated', 2)), of('updated', 2), 'the later frame as it is')
  const recreated = json(mergeNotifications(of('deleted', 1), of('created', 2))!)
  t.same(recreated, { ...json(of('created', 2)), data: { ...json(of('created', 2)).data, changeType: 'updated' } }, 'deleted then created: an update, the later document')
  t.equal(json(mergeNotifications(of('created', 1), of('updated', 2))!).data.changeType, 'created')
  t.equal(mergeNotifications('{"type":"batch","data":[]}', of('updated', 2)), of('updated', 2), 'a frame that is no notification: the later one')
})
