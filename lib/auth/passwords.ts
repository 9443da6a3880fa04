/**
 * Service-account passwords: scrypt hashes in config, compared in constant time. The format is
 * `scrypt$<N>$<r>$<p>$<salt base64url>$<hash base64url>`; `changefeed hash-password` prints one.
 */
import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto'

const KEY_LENGTH = 32
const DEFAULTS = { N: 16384, r: 8, p: 1 }

function derive (password: string, salt: Buffer, keyLength: number, options: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password, salt, keyLength, { ...options, maxmem: 256 * 1024 * 1024 }, (err, key) => err === null ? resolve(key) : reject(err))
  })
}

export async function hashPassword (password: string, cost = DEFAULTS): Promise<string> {
  const salt = randomBytes(16)
  const hash = await derive(password, salt, KEY_LENGTH, cost)
  return ['scrypt', cost.N, cost.r, cost.p, salt.toString('base64url'), hash.toString('base64url')].join('$')
}

interface ParsedHash { N: number, r: number, p: number, salt: Buffer, hash: Buffer }

export function parsePasswordHash (encoded: string): ParsedHash | null {
  const parts = encoded.split('$')
  if (parts.length !== 6 || parts[0] !== 'scrypt') return null
  const [N, r, p] = parts.slice(1, 4).map(Number)
  const salt = Buffer.from(parts[4], 'base64url')
  const hash = Buffer.from(parts[5], 'base64url')
  if (![N, r, p].every(Number.isInteger) || N < 2 || (N & (N - 1)) !== 0 || salt.length < 8 || hash.length < 16) return null
  return { N, r, p, salt, hash }
}

/** A hash to compare against when the user does not exist, so that timing does not tell which users do. */
const DECOY: ParsedHash = { ...DEFAULTS, salt: randomBytes(16), hash: randomBytes(KEY_LENGTH) }

/** True when `password` matches `encoded`. Takes the same time whether or not the account exists (`encoded` null). */
export async function verifyPassword (password: string, encoded: string | null): Promise<boolean> {
  const parsed = encoded === null ? null : parsePasswordHash(encoded)
  const target = parsed ?? DECOY
  const key = await derive(password, target.salt, target.hash.length, { N: target.N, r: target.r, p: target.p })
  return timingSafeEqual(key, target.hash) && parsed !== null
}
