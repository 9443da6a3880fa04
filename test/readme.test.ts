/**
 * The documents stay true: the option reference is the one the schema generates, every relative link (and the
 * heading it points at) exists, and the README starts with what it is and the two commands that matter.
 */
import t from 'tap'
import { existsSync } from 'node:fs'
import { dirname, join, normalize } from 'node:path'
import { OPTIONS_DOCUMENT, withOptionsTable } from '../bin/docs.js'
import { packageRoot } from '../lib/paths.js'
import { anchorsOf, documents, readDocument } from './helpers/docs.js'

const readme = readDocument('README.md')
const docs = documents()

t.test('the configuration reference matches lib/options.ts (run `npm run docs`)', async (t) => {
  const text = readDocument(OPTIONS_DOCUMENT)
  t.equal(withOptionsTable(text), text)
})

t.test('every relative link of every document reaches a file, and the heading it names', async (t) => {
  t.ok(docs.length >= 6, `${docs.length} documents: ${docs.join(', ')}`)
  let links = 0
  for (const doc of docs) {
    const text = readDocument(doc).replace(/^```[\s\S]*?^```/gm, '')
    for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      if (/^[a-z]+:/.test(target)) continue
      links++
      const [path, anchor] = target.split('#') as [string, string | undefined]
      const file = path === '' ? doc : normalize(join(dirname(doc), path))
      if (!existsSync(join(packageRoot, file))) {
        t.fail(`${doc}: ${target} does not exist`)
        continue
      }
      if (anchor !== undefined && file.endsWith('.md')) t.ok(anchorsOf(readDocument(file)).has(anchor), `${doc}: ${target}`)
    }
  }
  t.ok(links > 40, `${links} links checked`)
})

t.test('the README starts with what it is, then the start and test commands', async (t) => {
  const firstScreen = readme.split('\n').slice(0, 20).join('\n')
  t.match(firstScreen, /npm install fastify-changefeed && npx fastify-changefeed --demo/)
  t.match(firstScreen, /npm start -- --demo/)
  t.match(firstScreen, /npm test/)
})

t.test('the README links every reference document', async (t) => {
  for (const doc of docs) {
    if (doc === 'README.md' || doc.startsWith('test/') || doc.startsWith('examples/')) continue
    t.ok(readme.includes(`](${doc})`) || readme.includes(`](${doc}#`), doc)
  }
})

t.test('the client README has a table of every client option', async (t) => {
  const types = readDocument('lib/client/types.ts')
  const body = /export interface ClientOptions \{([\s\S]*?)\n\}/.exec(types)?.[1] ?? ''
  const options = [...body.matchAll(/^ {2}(\w+)\??:/gm)].map((m) => m[1])
  t.ok(options.length >= 10, `ClientOptions has ${options.join(', ')}`)
  const table = readDocument('lib/client/README.md')
  for (const option of options) t.match(table, new RegExp(`^\\| \`${option}\` \\|`, 'm'), `${option} has its row`)
})
