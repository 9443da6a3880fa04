/**
 * RFC 6902 JSON Patch, as `delta` notifications carry it: the server writes only `add`, `remove` and `replace`
 * (lib/route/diff.ts); the SDK applies them here. No imports: the client bundle includes this file.
 */

/** One operation of a patch. `path` is an RFC 6901 JSON Pointer ("" is the whole document). */
export type PatchOperation =
  | { op: 'add' | 'replace', path: string, value: unknown }
  | { op: 'remove', path: string }

type Container = Record<string, unknown> | unknown[]

const isContainer = (value: unknown): value is Container => typeof value === 'object' && value !== null

/** A path segment as a JSON Pointer writes it ('~' → '~0', '/' → '~1'). */
export function escapePointer (key: string): string {
  return key.includes('~') || key.includes('/') ? key.replace(/~/g, '~0').replace(/\//g, '~1') : key
}

function unescapePointer (segment: string): string {
  return segment.includes('~') ? segment.replace(/~1/g, '/').replace(/~0/g, '~') : segment
}

/** Thrown when a patch does not apply to the document (a wrong base, a corrupt operation). */
export class PatchError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'PatchError'
  }
}

/** An array index of a pointer: digits without a leading zero, below `max` (add may name the end: '-' or length). */
function indexOf (segment: string, length: number, adding: boolean): number {
  if (adding && segment === '-') return length
  if (!/^(0|[1-9][0-9]{0,8})$/.test(segment)) throw new PatchError(`bad array index "${segment}"`)
  const index = Number(segment)
  if (index > length || (!adding && index === length)) throw new PatchError(`array index ${index} out of range`)
  return index
}

/** An own property only: a pointer must not reach into a prototype ('__proto__', 'constructor'). */
function hasOwn (object: Record<string, unknown>, key: string): boolean {
  return Object.prototype.hasOwnProperty.call(object, key)
}

function setOwn (object: Record<string, unknown>, key: string, value: unknown): void {
  // assigning '__proto__' would set the prototype; a document may have such a key of its own
  if (key === '__proto__') Object.defineProperty(object, key, { value, writable: true, enumerable: true, configurable: true })
  else object[key] = value
}

/**
 * Applies `patch` to `document` and returns the result. `document` is not changed: the containers on the paths the
 * patch touches are copied (each once), everything else is shared with it. Throws PatchError when an operation
 * does not apply.
 */
export function applyPatch (document: unknown, patch: readonly PatchOperation[]): unknown {
  if (!Array.isArray(patch)) throw new PatchError('a patch is an array')
  /** containers copied by this call: changed in place by later operations */
  const copies = new Set<Container>()
  const copy = (value: Container): Container => {
    if (copies.has(value)) return value
    // spread defines own properties, an own '__proto__' key included
    const fresh: Container = Array.isArray(value) ? value.slice() : { ...value }
    copies.add(fresh)
    return fresh
  }
  let root = document
  for (const operation of patch as ReadonlyArray<{ op?: unknown, path?: unknown, value?: unknown } | null>) {
    const { op, path } = operation ?? {}
    if (typeof path !== 'string') throw new PatchError('an operation needs a path')
    if (op !== 'add' && op !== 'replace' && op !== 'remove') throw new PatchError(`unsupported operation "${String(op)}"`)
    if (op !== 'remove' && !Object.prototype.hasOwnProperty.call(operation, 'value')) throw new PatchError(`${op} needs a value`)
    const value = operation?.value
    if (path === '') {
      if (op === 'remove') throw new PatchError('cannot remove the document')
      root = value
      continue
    }
    if (path[0] !== '/') throw new PatchError(`bad pointer "${path}"`)
    const segments = path.slice(1).split('/').map(unescapePointer)
    if (!isContainer(root)) throw new PatchError(`no container at "${path}"`)
    root = copy(root)
    let parent = root as Container
    for (let i = 0; i < segments.length - 1; i++) {
      const key = segments[i]
      const child = Array.isArray(parent) ? parent[indexOf(key, parent.length, false)] : hasOwn(parent, key) ? parent[key] : undefined
      if (!isContainer(child)) throw new PatchError(`no container at "${path}"`)
      const fresh = copy(child)
      if (Array.isArray(parent)) parent[Number(key)] = fresh
      else setOwn(parent, key, fresh)
      parent = fresh
    }
    const last = segments[segments.length - 1]
    if (Array.isArray(parent)) {
      const index = indexOf(last, parent.length, op === 'add')
      if (op === 'add') parent.splice(index, 0, value)
      else if (op === 'replace') parent[index] = value
      else parent.splice(index, 1)
    } else {
      if (op !== 'add' && !hasOwn(parent, last)) throw new PatchError(`nothing at "${path}"`)
      if (op === 'remove') delete parent[last]
      else setOwn(parent, last, value)
    }
  }
  return root
}
