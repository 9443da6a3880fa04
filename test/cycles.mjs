/**
 * `npm run lint`'s import-cycle check: no module of lib/ imports, directly or through others, one that imports it
 * back — type imports included, so that what is a leaf (the protocol's messages, the SDK's frames and receivers)
 * stays one. Prints each cycle found and exits 1.
 */
import { readFileSync, readdirSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const sources = (dir) => readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
  const path = join(dir, entry.name)
  return entry.isDirectory() ? sources(path) : entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts') ? [path] : []
})

const IMPORT = /^(?:import|export)\s+(?:type\s+)?[^'"]*?from\s+'(\.[^']+)'/gm
const graph = new Map(sources(join(root, 'lib')).map((file) => [file, [...readFileSync(file, 'utf8').matchAll(IMPORT)]
  .map((m) => resolve(dirname(file), m[1].replace(/\.js$/, '.ts')))]))

// Tarjan's strongly connected components: a component of more than one module is a cycle
let next = 0
const index = new Map()
const low = new Map()
const stack = []
const onStack = new Set()
const cycles = []
function visit (v) {
  index.set(v, next)
  low.set(v, next++)
  stack.push(v)
  onStack.add(v)
  for (const w of graph.get(v) ?? []) {
    if (!graph.has(w)) continue
    if (!index.has(w)) {
      visit(w)
      low.set(v, Math.min(low.get(v), low.get(w)))
    } else if (onStack.has(w)) low.set(v, Math.min(low.get(v), index.get(w)))
  }
  if (low.get(v) !== index.get(v)) return
  const component = []
  let w
  do {
    w = stack.pop()
    onStack.delete(w)
    component.push(relative(root, w))
  } while (w !== v)
  if (component.length > 1) cycles.push(component.sort())
}
for (const v of graph.keys()) if (!index.has(v)) visit(v)

for (const cycle of cycles) console.error(`import cycle: ${cycle.join(' ↔ ')}`)
process.exit(cycles.length === 0 ? 0 : 1)
