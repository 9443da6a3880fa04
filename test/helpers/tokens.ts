/** Signs test JWTs with node:crypto, including the broken ones a server must refuse. */
import { createHmac, createSign, generateKeyPairSync, type KeyObject } from 'node:crypto'

const b64 = (value: object | Buffer): string => (Buffer.isBuffer(value) ? value : Buffer.from(JSON.stringify(value))).toString('base64url')

export function signHs256 (claims: object, secret: string, header: object = {}): string {
  const head = b64({ alg: 'HS256', typ: 'JWT', ...header })
  const body = b64(claims)
  return `${head}.${body}.${createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url')}`
}

export function signRs256 (claims: object, key: KeyObject, kid?: string): string {
  const head = b64({ alg: 'RS256', typ: 'JWT', ...(kid === undefined ? {} : { kid }) })
  const body = b64(claims)
  const signature = createSign('RSA-SHA256').update(`${head}.${body}`).sign(key).toString('base64url')
  return `${head}.${body}.${signature}`
}

/** The unsigned token of the `alg: none` attack. */
export function unsigned (claims: object): string {
  return `${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims)}.`
}

export function rsaKeyPair (): { privateKey: KeyObject, publicKey: KeyObject } {
  return generateKeyPairSync('rsa', { modulusLength: 2048 })
}

export const now = (): number => Math.floor(Date.now() / 1000)
