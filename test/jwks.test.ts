/**
 * Asymmetric JWTs: a PEM public key, and a JWKS endpoint (Clerk-style) served by a local test server, with a key
 * rotation. Algorithm confusion (HS256 signed with the public key) and unsigned tokens are refused.
 */
import t from 'tap'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { startApp } from './helpers/app.js'
import { TestClient } from './helpers/client.js'
import { now, rsaKeyPair, signHs256, signRs256, unsigned } from './helpers/tokens.js'

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

t.test('JWKS: keys are fetched, cached, and rotated', async (t) => {
  let keys: object[] = [jwk(keyA, 'k1')]
  let fetches = 0
  const jwksServer = createServer((req, res) => {
    fetches++
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ keys }))
  })
  await new Promise<void>((resolve) => jwksServer.listen(0, '127.0.0.1', resolve))
  t.teardown(() => jwksServer.close())
  const jwksUrl = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/.well-known/jwks.json`
  const { url } = await startApp(t, { entities, auth: { jwt: { jwksUrl, issuer: ISSUER } } })

  t.ok(await accepted(url, signRs256(claims('user-1'), keyA.privateKey, 'k1')), 'signed with the published key')
  t.ok(await accepted(url, signRs256(claims('user-2'), keyA.privateKey, 'k1')))
  t.equal(fetches, 1, 'the key is cached')

  keys = [jwk(keyB, 'k2'), jwk(keyA, 'k1')]
  t.ok(await accepted(url, signRs256(claims('user-3'), keyB.privateKey, 'k2')), 'a rotated-in key is found')
  t.equal(fetches, 2)

  t.notOk(await accepted(url, signRs256(claims('user-4'), keyC.privateKey, 'k3')), 'an unknown key id is refused')
  const afterMiss = fetches
  t.notOk(await accepted(url, signRs256(claims('user-5'), keyC.privateKey, 'k4')), 'another unknown key id')
  t.equal(fetches, afterMiss, 'forged key ids do not each cost a JWKS request')
  t.notOk(await accepted(url, signRs256(claims('user-6'), keyC.privateKey, 'k1')), 'a known kid with the wrong key')
  t.notOk(await accepted(url, signHs256(claims('user-7'), pemA, { kid: 'k1' })), 'HS256 with a JWKS kid')
})

t.test('options: exactly one key source, and never alg none', async (t) => {
  const { resolveOptions } = await import('../lib/options.js')
  t.throws(() => resolveOptions({ auth: { jwt: { secret: 's', publicKey: 'p' } } }), { code: 'CHANGEFEED_INVALID_OPTIONS' })
  t.throws(() => resolveOptions({ auth: { jwt: {} } }), { code: 'CHANGEFEED_INVALID_OPTIONS' })
  t.throws(() => resolveOptions({ auth: { jwt: { secret: 's', algorithms: ['none'] } } }), { code: 'CHANGEFEED_INVALID_OPTIONS', message: /algorithms/ })
  t.throws(() => resolveOptions({ auth: { jwt: { jwksUrl: 'file:///etc/passwd' } } }), { code: 'CHANGEFEED_INVALID_OPTIONS' })
})
