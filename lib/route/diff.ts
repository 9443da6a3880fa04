/**
 * The RFC 6902 patch from one JSON document to the next (`delta` payloads): `add`, `remove` and `replace` only, so
 * that applying it (lib/protocol/patch.ts) is short. Objects are compared key by key, arrays index by index (what
 * is appended or cut off at the end is added or removed); an array whose patch would not be smaller than the array
 * itself is replaced whole, as are values that change type.
 */
import { escapePointer, type PatchOperation } from '../protocol/patch.js'

type JsonObject = Record<string, unknown>

const isObject = (value: unknown): value is JsonObject => typeof value === 'object' && value !== null && !Array.isArray(value)
const hasOwn = (object: JsonObject, key: string): boolean => Object.prototype.hasOwnProperty.call(object, key)

/** The operations that turn `from` into `to` (both JSON: what JSON.parse returns). Empty when they are equal. */
export function diffDocuments (from: unknown, to: unknown): PatchOperation[] {
  const operations: PatchOperation[] = []
  diffValue(from, to, '', operations)
  return operations
}

function diffValue (from: unknown, to: unknown, path: string, out: PatchOperation[]): void {
  if (from === to) return
  if (isObject(from) && isObject(to)) return diffObject(from, to, path, out)
  if (Array.isArray(from) && Array.isArray(to)) return diffArray(from, to, path, out)
  out.push({ op: 'replace', path, value: to })
}

function diffObject (from: JsonObject, to: JsonObject, path: string, out: PatchOperation[]): void {
  for (const key of Object.keys(from)) if (!hasOwn(to, key)) out.push({ op: 'remove', path: path + '/' + escapePointer(key) })
  for (const key of Object.keys(to)) {
    const at = path + '/' + escapePointer(key)
    if (hasOwn(from, key)) diffValue(from[key], to[key], at, out)
    else out.push({ op: 'add', path: at, value: to[key] })
  }
}

/** the bytes an operation adds besides its path and value: {"op":"replace","path":"","value":} and a comma */
const OPERATION_BYTES = 35

function diffArray (from: unknown[], to: unknown[], path: string, out: PatchOperation[]): void {
  const start = out.length
  const common = Math.min(from.length, to.length)
  for (let i = 0; i < common; i++) diffValue(from[i], to[i], path + '/' + String(i), out)
  // cut off from the end first, so that every index names the element it meant
  for (let i = from.length - 1; i >= to.length; i--) out.push({ op: 'remove', path: path + '/' + String(i) })
  for (let i = from.length; i < to.length; i++) out.push({ op: 'add', path: path + '/' + String(i), value: to[i] })
  if (out.length - start < 2) return
  // several operations: the whole array may be smaller (a score list of numbers rewritten, an element inserted)
  const whole = JSON.stringify(to).length + path.length + OPERATION_BYTES
  if (JSON.stringify(out.slice(start)).length < whole) return
  out.length = start
  out.push({ op: 'replace', path, value: to })
}
