/**
 * Asymmetric JWTs: a PEM public key, and a JWKS endpoint (Clerk-style) served by a local test server, with a key
 * rotation and forged key ids. Algorithm confusion (HS256 signed with the public key) and unsigned tokens are refused.
 */
import t from 'tap'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { randomUUID } from 'node:crypto'
import { Clock } from 'clock-mock'
import { resolveOptions } from '../../../lib/options.js'
import { startApp } from '../../helpers/app.js'
import { standaloneAuthenticator } from '../../helpers/authenticator.js'
import { TestClient } from '../../helpers/client.js'
import { now, rsaKeyPair, signHs256, signRs256, unsigned } from '../../helpers/tokens.js'

const ISSUER = 'https://clerk.ballr.test'
const claims = (sub: string): object => ({ sub, iss: ISSUER, exp: now() + 600, roles: ['Member'] })
const keyA = rsaKeyPair()
const keyB = rsaKeyPair()
const keyC = rsaKeyPair()
const jwk = (key: ReturnType<typeof rsaKeyPair>, kid: string): object => ({ ...key.publicKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' })
const pemA = keyA.publicKey.export({ format: 'pem', type: 'spki' }).toString()

const entities = { MemberFeed: { access: 'authenticated' as const } }

async function accepted (url: string, token: string): Promise<boolean> {
  const ws = await TestClient.open(`${url}?token=${token}`)
  const reply = await Promise.race([ws.subscribe('MemberFeed', 'news'), ws.closed.then(() => null)])
  ws.close()
  return reply?.type === 'subscribed'
}

t.test('a PEM public key verifies RS256 and refuses algorithm confusion', async (t) => {
  const { url } = await startApp(t, { entities, auth: { jwt: { publicKey: pemA, issuer: ISSUER } } })
  t.ok(await accepted(url, signRs256(claims('user-1'), keyA.privateKey)), 'RS256 with the key')
  t.notOk(await accepted(url, signRs256(claims('user-1'), keyB.privateKey)), 'RS256 with another key')
  t.notOk(await accepted(url, signHs256(claims('user-1'), pemA)), 'HS256 keyed with the public key')
  t.notOk(await accepted(url, unsigned(claims('user-1'))), 'alg none')
})

/** A JWKS endpoint on a local port serving `keys`, counting its requests. */
async function jwksEndpoint (t: { teardown(fn: () => unknown): void }, keys: object[]): Promise<{ url: string, keys: object[], fetches: () => number }> {
  const endpoint = { url: '', keys, fetches: () => fetches }
  let fetches = 0
  const server = createServer((_req, res) => {
    fetches++
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ keys: endpoint.keys }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => server.close())
  endpoint.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`
  return endpoint
}

t.test('JWKS: keys are fetched, cached, and rotated', async (t) => {
  const jwks = await jwksEndpoint(t, [jwk(keyA, 'k1')])
  const { url } = await startApp(t, { entities, auth: { jwt: { jwksUrl: jwks.url, issuer: ISSUER } } })
  t.equal(jwks.fetches(), 1, 'the set is loaded at start')

  t.ok(await accepted(url, signRs256(claims('user-1'), keyA.privateKey, 'k1')), 'signed with the published key')
  t.ok(await accepted(url, signRs256(claims('user-2'), keyA.privateKey, 'k1')))
  t.equal(jwks.fetches(), 1, 'the key is cached')

  jwks.keys = [jwk(keyB, 'k2'), jwk(keyA, 'k1')]
  t.ok(await accepted(url, signRs256(claims('user-3'), keyB.privateKey, 'k2')), 'a rotated-in key is found')
  t.equal(jwks.fetches(), 2)

  t.notOk(await accepted(url, signRs256(claims('user-4'), keyC.privateKey, 'k3')), 'an unknown key id is refused')
  const afterMiss = jwks.fetches()
  t.notOk(await accepted(url, signRs256(claims('user-5'), keyC.privateKey, 'k3')), 'the same unknown key id again')
  t.equal(jwks.fetches(), afterMiss, 'a key id found unknown is not fetched for again')
  t.notOk(await accepted(url, signRs256(claims('user-6'), keyC.privateKey, 'k1')), 'a known kid with the wrong key')
  t.notOk(await accepted(url, signHs256(claims('user-7'), pemA, { kid: 'k1' })), 'HS256 with a JWKS kid')
})

t.test('JWKS: a flood of forged key ids blocks neither the real key nor a rotated-in one', async (t) => {
  const jwks = await jwksEndpoint(t, [jwk(keyA, 'k1')])
  const { url } = await startApp(t, { entities, auth: { jwt: { jwksUrl: jwks.url, issuer: ISSUER } } })
  jwks.keys = [jwk(keyA, 'k1'), jwk(keyB, 'k2')]
  const forged = Array.from({ length: 20 }, async (_, i) => await accepted(url, signRs256(claims(`mallory-${i}`), keyC.privateKey, randomUUID())))
  const real = Array.from({ length: 20 }, async (_, i) => await accepted(url, signRs256(claims(`user-${i}`), keyA.privateKey, 'k1')))
  const rotated = accepted(url, signRs256(claims('user-new'), keyB.privateKey, 'k2'))
  t.same(await Promise.all(real), real.map(() => true), 'every sign-in with the real key id is accepted')
  t.ok(await rotated, 'the rotated-in key is found while forged ids arrive')
  t.same(await Promise.all(forged), forged.map(() => false), 'every forged key id is refused')
  t.ok(jwks.fetches() <= 3, `forged ids share refetches (${jwks.fetches()} requests to the endpoint)`)
})

t.test('JWKS: the real key id keeps working while forged ones arrive every 5 s, for 12 minutes (fake clock)', async (t) => {
  const jwks = await jwksEndpoint(t, [jwk(keyA, 'k1')])
  const clock = new Clock()
  const { authenticator } = await standaloneAuthenticator(t, { jwt: { jwksUrl: jwks.url, issuer: ISSUER } }, { clock })

  let refused = 0
  let forgedAccepted = 0
  for (let second = 0; second < 12 * 60; second += 5) {
    // the forged sign-in may wait for its refetch (on the fake clock); the real one must not wait for anything
    const forged = authenticator.verifyToken(signRs256(claims('mallory'), keyC.privateKey, randomUUID()))
    const real = await authenticator.verifyToken(signRs256(claims('user-1'), keyA.privateKey, 'k1'))
    if ('failure' in real) refused++
    clock.advance(5000)
    if (!('failure' in await forged)) forgedAccepted++
  }
  t.equal(refused, 0, 'no sign-in with the real key id was refused, before or after the 10-minute refresh')
  t.equal(forgedAccepted, 0)
  t.ok(jwks.fetches() <= 1 + 12 * 12 + 1, `at most one fetch per forged id and one refresh (${jwks.fetches()})`)
})

t.test('options: exactly one key source, and never alg none', async (t) => {
  t.throws(() => resolveOptions({ auth: { jwt: { secret: 's', publicKey: 'p' } } }), { code: 'CHANGEFEED_INVALID_OPTIONS' })
  t.throws(() => resolveOptions({ auth: { jwt: {} } }), { code: 'CHANGEFEED_INVALID_OPTIONS' })
  t.throws(() => resolveOptions({ auth: { jwt: { secret: 's', algorithms: ['none'] } } }), { code: 'CHANGEFEED_INVALID_OPTIONS', message: /algorithms/ })
  t.throws(() => resolveOptions({ auth: { jwt: { jwksUrl: 'file:///etc/passwd' } } }), { code: 'CHANGEFEED_INVALID_OPTIONS' })
})
