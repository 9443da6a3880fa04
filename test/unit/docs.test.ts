/**
 * The documents stay true: the option reference is the one the schema generates, every relative link (and the
 * heading it points at) exists, and the README starts with what it is and the two commands that matter.
 */
import t from 'tap'
import { existsSync } from 'node:fs'
import { dirname, join, normalize } from 'node:path'
import { OPTIONS_DOCUMENT, describeOptions, withOptionsTable } from '../../bin/docs.js'
import { packageRoot } from '../../lib/package.js'
import { anchorsOf, documents, readDocument, shellBlocks } from '../helpers/docs.js'

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

t.test('the README starts with what it is, then the start and test commands that work today', async (t) => {
  const firstScreen = readme.split('\n').slice(0, 30).join('\n')
  t.match(firstScreen, /not on the npm registry yet/i, 'says plainly that it is not published')
  const [fromClone, fromTarball] = shellBlocks(firstScreen)
  t.same(fromClone, ['npm install && npm start -- --demo', 'npm test'], 'from a clone: start it, test it (test/e2e/quickstart.test.ts runs them)')
  t.ok(fromTarball?.some((line) => line.includes('npm pack')) && fromTarball.some((line) => /npm install \S+\.tgz/.test(line)), 'or from the packed tarball (test/e2e/package.test.ts runs it)')
  t.match(firstScreen, /npm test/, 'and the whole suite')
  t.notMatch(readme, /npm (?:install|i) fastify-changefeed\b/, 'no install from the registry, where it is not')
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

t.test('where the documents say which tables can be watched, they say full and delta need a data column', async (t) => {
  const intro = readme.slice(0, readme.indexOf('```'))
  t.match(intro, /any table with an `id`[^]*[*`]full[*`][^]*[*`]delta[*`][^]*`data`/i, 'the README\'s opening')
  t.match(readDocument('sql/README.md'), /`full`\s+and\s+`delta`[^.]*`data`/, 'sql/README.md')
  for (const option of ['entities.<Type>.payload', 'entities.<Type>.table', 'capture.tables']) {
    t.match(describeOptions().find((row) => row.path === option)?.description, /`data`/, `lib/OPTIONS.md: ${option}`)
  }
})

t.test('the README is a quick start and a map: the detail lives in the references beside the code', async (t) => {
  const lines = readme.split('\n').length
  t.ok(lines <= 400, `${lines} lines`)
  const sectionOf = (title: string): string => {
    const from = readme.indexOf(`\n## ${title}\n`)
    const to = readme.indexOf('\n## ', from + 1)
    return readme.slice(from, to < 0 ? undefined : to)
  }
  t.notMatch(sectionOf('Benchmarks'), /^\|/m, 'no benchmark tables (test/bench/REPORT.md has them)')
  t.notMatch(readme.slice(0, readme.indexOf('\n## How it works\n')), /CHANGEFEED_CACHE_DIR|27 MB|~\/\.cache/, 'no PGlite internals before How it works (bin/README.md has them)')
})
