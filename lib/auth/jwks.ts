/**
 * The signing keys of a JWKS endpoint (Clerk-style), held as one set: key id → PEM. The last good set is always
 * used; a background refresh replaces it every 10 minutes, and a failed refresh keeps it. A token whose key id the
 * set lacks makes the set be fetched again — that is how a rotated-in key is found — but forged key ids must neither
 * make every sign-in a request to the identity provider nor push the real keys out:
 *
 * - refetches are shared: a sign-in joins the one waiting or under way, and one starts at most once a second;
 * - a key id still missing from a set fetched after it was asked for is remembered as unknown for a minute (at most
 *   1000 of them), so the same forged id is refused without another request.
 *
 * A fetch gives up after 5 s and refuses a response larger than 256 KiB.
 */
import { createPublicKey, type JsonWebKey } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import { systemClock, type Clock, type Timer } from './clock.js'

/** Codes of the tokens the key set cannot verify (they become the `failure` of the sign-in). */
export const JwksFailure = {
  /** the token names no key id or algorithm */
  noKeyId: 'JWKS_NO_KID',
  /** no key with this id in the endpoint's set */
  unknownKeyId: 'JWKS_UNKNOWN_KID',
  /** the key is published for another algorithm than the token's */
  algorithmMismatch: 'JWKS_ALG_MISMATCH'
} as const

export interface JwksKeySetOptions {
  clock?: Clock
  fetch?: typeof fetch
  refreshIntervalMs?: number
  /** the least time between the starts of two fetches */
  minFetchIntervalMs?: number
  unknownKeyIdTtlMs?: number
  maxUnknownKeyIds?: number
  timeoutMs?: number
  maxResponseBytes?: number
}

interface Key { pem: string, alg: string | undefined }
/** `number`: fetches are numbered as they start; a sign-in trusts a miss only from a fetch that started after it asked. */
interface Fetched { number: number, ok: boolean }

const DEFAULTS = {
  refreshIntervalMs: 10 * 60_000,
  minFetchIntervalMs: 1000,
  unknownKeyIdTtlMs: 60_000,
  maxUnknownKeyIds: 1000,
  timeoutMs: 5000,
  maxResponseBytes: 256 * 1024
}

const refusal = (code: string): Error => Object.assign(new Error(code), { code })

export class JwksKeySet {
  private keys = new Map<string, Key>()
  /** key id → until when it is known not to be in the set */
  private readonly unknown = new Map<string, number>()
  private readonly settings: typeof DEFAULTS
  private readonly clock: Clock
  private readonly fetch: typeof fetch
  private pending: Promise<Fetched> | null = null
  private started = 0
  private lastStartAt = -Infinity
  private refreshTimer: Timer | null = null
  /** the wait for the next fetch slot, and how to end it early at close */
  private slot: { timer: Timer, wake: () => void } | null = null
  private download: AbortController | null = null
  private closed = false

  constructor (private readonly url: string, private readonly log: Pick<FastifyBaseLogger, 'warn'>, options: JwksKeySetOptions = {}) {
    const { clock = systemClock, fetch: fetchFn = fetch, ...settings } = options
    this.clock = clock
    this.fetch = fetchFn
    this.settings = { ...DEFAULTS, ...settings }
  }

  /** Loads the set (a failure is logged; the first sign-in tries again) and starts the background refresh. */
  async start (): Promise<void> {
    this.refreshTimer = this.clock.setInterval(() => { void this.refresh() }, this.settings.refreshIntervalMs)
    this.refreshTimer.unref()
    await this.refresh()
  }

  close (): void {
    this.closed = true
    if (this.refreshTimer !== null) this.clock.clearInterval(this.refreshTimer)
    if (this.slot !== null) {
      this.clock.clearTimeout(this.slot.timer)
      this.slot.wake()
    }
    this.download?.abort()
  }

  /** The PEM public key for a token's `kid` and `alg`; throws an error with a JwksFailure code. */
  async key (kid: string, alg: string): Promise<string> {
    const key = this.keys.get(kid) ?? await this.lookUp(kid)
    if (key.alg !== undefined && key.alg !== alg) throw refusal(JwksFailure.algorithmMismatch)
    return key.pem
  }

  /** Fetches the set again: joins the fetch waiting or under way, else starts one as soon as the interval allows. */
  async refresh (): Promise<Fetched> {
    this.pending ??= this.fetchInTurn().finally(() => { this.pending = null })
    return await this.pending
  }

  private async lookUp (kid: string): Promise<Key> {
    const until = this.unknown.get(kid)
    if (until !== undefined && until > this.clock.now()) throw refusal(JwksFailure.unknownKeyId)
    const askedAfter = this.started
    for (;;) {
      const fetched = await this.refresh()
      const key = this.keys.get(kid)
      if (key !== undefined) return key
      // the endpoint did not answer: nothing is learnt about this id, so it is not remembered as unknown
      if (!fetched.ok) throw refusal(JwksFailure.unknownKeyId)
      // a fetch already under way when the id was asked for may predate its key: wait for the next one
      if (fetched.number > askedAfter) break
    }
    this.rememberUnknown(kid)
    throw refusal(JwksFailure.unknownKeyId)
  }

  private rememberUnknown (kid: string): void {
    this.unknown.delete(kid)
    // every entry lives as long, so the first one is the oldest
    if (this.unknown.size >= this.settings.maxUnknownKeyIds) this.unknown.delete(this.unknown.keys().next().value!)
    this.unknown.set(kid, this.clock.now() + this.settings.unknownKeyIdTtlMs)
  }

  private async fetchInTurn (): Promise<Fetched> {
    const wait = this.lastStartAt + this.settings.minFetchIntervalMs - this.clock.now()
    if (wait > 0 && !this.closed) {
      await new Promise<void>((resolve) => {
        this.slot = { timer: this.clock.setTimeout(resolve, wait), wake: resolve }
      })
      this.slot = null
    }
    const number = ++this.started
    if (this.closed) return { number, ok: false }
    this.lastStartAt = this.clock.now()
    try {
      this.keys = await this.fetchKeys()
      return { number, ok: true }
    } catch (err) {
      if (!this.closed) this.log.warn({ url: this.url, err: (err as Error).message }, 'changefeed: JWKS fetch failed; the previous keys stay in use')
      return { number, ok: false }
    }
  }

  private async fetchKeys (): Promise<Map<string, Key>> {
    const abort = new AbortController()
    this.download = abort
    const timer = this.clock.setTimeout(() => abort.abort(new Error(`no answer within ${this.settings.timeoutMs} ms`)), this.settings.timeoutMs)
    try {
      const response = await this.fetch(this.url, { signal: abort.signal, headers: { accept: 'application/json' } })
      if (!response.ok) throw new Error(`HTTP ${response.status}`)
      const body = JSON.parse(await readBounded(response, this.settings.maxResponseBytes)) as { keys?: unknown }
      if (!Array.isArray(body.keys)) throw new Error('the response has no keys array')
      const keys = keysOf(body.keys)
      // an empty set would refuse every sign-in: more likely an endpoint fault than a rotation to nothing
      if (keys.size === 0) throw new Error('the response has no usable signing key')
      return keys
    } finally {
      this.clock.clearTimeout(timer)
      this.download = null
    }
  }
}

/** Public signing keys with a key id; symmetric (`oct`), encryption-only and unreadable keys are left out. */
function keysOf (jwks: unknown[]): Map<string, Key> {
  const keys = new Map<string, Key>()
  for (const jwk of jwks as Array<JsonWebKey & { kid?: unknown, use?: unknown, alg?: unknown }>) {
    if (jwk === null || typeof jwk !== 'object' || typeof jwk.kid !== 'string' || jwk.kty === 'oct') continue
    if (jwk.use !== undefined && jwk.use !== 'sig') continue
    try {
      const pem = createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'pem' }).toString()
      keys.set(jwk.kid, { pem, alg: typeof jwk.alg === 'string' ? jwk.alg : undefined })
    } catch {
      // a key node:crypto cannot read cannot verify anything either
    }
  }
  return keys
}

async function readBounded (response: Response, maxBytes: number): Promise<string> {
  if (Number(response.headers.get('content-length') ?? 0) > maxBytes) throw new Error(`the response is larger than ${maxBytes} bytes`)
  if (response.body === null) return ''
  const reader = response.body.getReader()
  const chunks: Uint8Array[] = []
  let size = 0
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    size += value.byteLength
    if (size > maxBytes) {
      await reader.cancel()
      throw new Error(`the response is larger than ${maxBytes} bytes`)
    }
    chunks.push(value)
  }
  return Buffer.concat(chunks).toString('utf8')
}
