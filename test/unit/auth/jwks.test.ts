/**
 * The JWKS key set on a fake clock (clock-mock) with an endpoint in memory: shared and spaced refetches, unknown key
 * ids remembered (and bounded), rotation, the background refresh, and fetches that fail, hang or answer too much.
 */
import t from 'tap'
import { Clock } from 'clock-mock'
import { JwksFailure, JwksKeySet, type JwksKeySetOptions } from '../../../lib/auth/jwks.js'
import { rsaKeyPair } from '../../helpers/tokens.js'

const keyA = rsaKeyPair()
const keyB = rsaKeyPair()
const jwk = (key: ReturnType<typeof rsaKeyPair>, kid: string, extra: object = {}): object =>
  ({ ...key.publicKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig', ...extra })
const pemOf = (key: ReturnType<typeof rsaKeyPair>): string => key.publicKey.export({ type: 'spki', format: 'pem' }).toString()

/** Lets the promise continuations that a timer of the fake clock released run. */
const turn = async (): Promise<void> => await new Promise((resolve) => setImmediate(resolve))

interface Endpoint {
  keys: object[]
  calls: number
  /** replaces the answer: a status, or a function of the request's abort signal */
  answer: number | ((signal: AbortSignal) => Promise<Response>) | null
}

async function keySet (t: { teardown(fn: () => unknown): void }, options: JwksKeySetOptions = {}): Promise<{ set: JwksKeySet, clock: Clock, endpoint: Endpoint, warnings: string[] }> {
  const clock = new Clock()
  const endpoint: Endpoint = { keys: [jwk(keyA, 'k1')], calls: 0, answer: null }
  const warnings: string[] = []
  const fetchJwks = async (_url: string | URL | Request, init?: RequestInit): Promise<Response> => {
    endpoint.calls++
    const { answer } = endpoint
    if (typeof answer === 'number') return new Response('{}', { status: answer })
    if (answer !== null) return await answer(init!.signal!)
    return Response.json({ keys: endpoint.keys })
  }
  const set = new JwksKeySet('https://idp.test/.well-known/jwks.json', { warn: (_obj: unknown, msg?: string) => { warnings.push(msg ?? '') } } as never, {
    clock, fetch: fetchJwks as typeof fetch, ...options
  })
  t.teardown(() => set.close())
  await set.start()
  return { set, clock, endpoint, warnings }
}

t.test('the set is served without fetching; an unknown key id costs one fetch and is then remembered', async (t) => {
  const { set, clock, endpoint } = await keySet(t)
  t.equal(endpoint.calls, 1, 'loaded at start')
  t.equal(await set.key('k1', 'RS256'), pemOf(keyA))
  t.equal(endpoint.calls, 1)

  const forged = set.key('forged', 'RS256')
  await turn()
  t.equal(endpoint.calls, 1, 'no second fetch within a second of the first')
  clock.advance(1000)
  await t.rejects(forged, { code: JwksFailure.unknownKeyId })
  t.equal(endpoint.calls, 2)
  await t.rejects(set.key('forged', 'RS256'), { code: JwksFailure.unknownKeyId })
  t.equal(endpoint.calls, 2, 'the same forged id again: refused without a fetch')
  t.equal(await set.key('k1', 'RS256'), pemOf(keyA), 'the real key still works')

  clock.advance(60_000)
  await t.rejects(set.key('forged', 'RS256'), { code: JwksFailure.unknownKeyId })
  t.equal(endpoint.calls, 3, 'remembered for a minute')
})

t.test('concurrent unknown key ids share one fetch, and fetches start at most once a second', async (t) => {
  const { set, clock, endpoint } = await keySet(t)
  const forged = Array.from({ length: 20 }, async (_, i) => await set.key(`forged-${i}`, 'RS256'))
  clock.advance(1000)
  for (const attempt of forged) await t.rejects(attempt, { code: JwksFailure.unknownKeyId })
  t.equal(endpoint.calls, 2, 'twenty forged ids, one fetch')

  const next = set.key('forged-next', 'RS256')
  clock.advance(999)
  await turn()
  t.equal(endpoint.calls, 2, 'not before a second has passed')
  clock.advance(1)
  await t.rejects(next, { code: JwksFailure.unknownKeyId })
  t.equal(endpoint.calls, 3)
})

t.test('a rotated-in key is found on its first use, even while a fetch is under way', async (t) => {
  const { set, clock, endpoint } = await keySet(t)
  endpoint.keys = [jwk(keyB, 'k2'), jwk(keyA, 'k1')]
  const rotated = set.key('k2', 'RS256')
  clock.advance(1000)
  t.equal(await rotated, pemOf(keyB), 'found after the one-second spacing')

  // a fetch that started before k3 was published cannot tell that k3 is unknown
  let answer: (() => void) | null = null
  endpoint.answer = async () => await new Promise<Response>((resolve) => { answer = () => resolve(Response.json({ keys: [jwk(keyA, 'k1')] })) })
  clock.advance(1000)
  const refresh = set.refresh()
  await turn()
  endpoint.answer = null
  endpoint.keys = [jwk(keyB, 'k3'), jwk(keyA, 'k1')]
  const k3 = set.key('k3', 'RS256')
  answer!()
  await refresh
  await turn()
  clock.advance(1000)
  t.equal(await k3, pemOf(keyB), 'asked during an older fetch: the next fetch finds it')
})

t.test('the background refresh replaces the set every 10 minutes; a failed one keeps it, with a warning', async (t) => {
  const { set, clock, endpoint, warnings } = await keySet(t)
  endpoint.keys = [jwk(keyB, 'k2')]
  clock.advance(10 * 60_000)
  // the timer's refresh is under way: this joins it
  t.match(await set.refresh(), { ok: true })
  t.equal(endpoint.calls, 2)
  t.equal(await set.key('k2', 'RS256'), pemOf(keyB), 'the new set')
  const removed = set.key('k1', 'RS256')
  clock.advance(1000)
  await t.rejects(removed, { code: JwksFailure.unknownKeyId }, 'a key taken out of the set is no longer accepted')

  endpoint.answer = 500
  clock.advance(10 * 60_000)
  t.match(await set.refresh(), { ok: false }, 'refreshed, and failed')
  t.equal(warnings.length, 1, 'the failure is logged')
  t.equal(await set.key('k2', 'RS256'), pemOf(keyB), 'the last good set stays in use')
})

t.test('a fetch that does not answer within 5 s is abandoned; the set stays', async (t) => {
  const { set, clock, endpoint, warnings } = await keySet(t)
  endpoint.answer = async (signal) => await new Promise<Response>((_resolve, reject) => signal.addEventListener('abort', () => reject(signal.reason)))
  clock.advance(1000)
  const refresh = set.refresh()
  await turn()
  clock.advance(4999)
  await turn()
  t.equal(warnings.length, 0, 'still waiting at 4999 ms')
  clock.advance(1)
  t.match(await refresh, { ok: false })
  t.equal(warnings.length, 1)
  t.equal(await set.key('k1', 'RS256'), pemOf(keyA))
})

t.test('responses past the size bound, without keys, or with no usable signing key are refused', async (t) => {
  const { set, clock, endpoint, warnings } = await keySet(t, { maxResponseBytes: 4096 })
  const padded = { keys: [jwk(keyB, 'k2')], padding: 'x'.repeat(5000) }
  const bodies: Record<string, () => Response> = {
    'too large (declared)': () => new Response(JSON.stringify(padded), { headers: { 'content-length': String(JSON.stringify(padded).length) } }),
    'too large (streamed)': () => new Response(new Blob([JSON.stringify(padded)]).stream()),
    'no keys array': () => Response.json({ keys: 'k2' }),
    'only a symmetric and an encryption key': () => Response.json({ keys: [{ kty: 'oct', k: 'c2VjcmV0', kid: 'k2' }, jwk(keyB, 'k2', { use: 'enc' })] })
  }
  for (const [what, body] of Object.entries(bodies)) {
    endpoint.answer = async () => body()
    clock.advance(1000)
    t.match(await set.refresh(), { ok: false }, what)
  }
  t.equal(warnings.length, Object.keys(bodies).length)
  t.equal(await set.key('k1', 'RS256'), pemOf(keyA), 'the previous set stays')
})

t.test('a key published for one algorithm does not verify tokens of another', async (t) => {
  const { set } = await keySet(t)
  await t.rejects(set.key('k1', 'PS256'), { code: JwksFailure.algorithmMismatch })
})

t.test('remembered unknown key ids are bounded: the oldest is forgotten first', async (t) => {
  const { set, clock, endpoint } = await keySet(t, { maxUnknownKeyIds: 2 })
  for (const kid of ['a', 'b', 'c']) {
    const attempt = set.key(kid, 'RS256')
    clock.advance(1000)
    await t.rejects(attempt, { code: JwksFailure.unknownKeyId })
  }
  t.equal(endpoint.calls, 4)
  await t.rejects(set.key('c', 'RS256'), { code: JwksFailure.unknownKeyId })
  t.equal(endpoint.calls, 4, 'c is remembered')
  const again = set.key('a', 'RS256')
  clock.advance(1000)
  await t.rejects(again, { code: JwksFailure.unknownKeyId })
  t.equal(endpoint.calls, 5, 'a was forgotten')
})

t.test('close ends a wait for the next fetch without fetching', async (t) => {
  const { set, endpoint } = await keySet(t)
  const waiting = set.key('forged', 'RS256')
  set.close()
  await t.rejects(waiting, { code: JwksFailure.unknownKeyId })
  t.equal(endpoint.calls, 1)
})
