/** README.md stays true: the option reference is the one the schema generates, and the examples it names exist. */
import t from 'tap'
import { existsSync, readFileSync } from 'node:fs'
import { withOptionsTable } from '../bin/docs.js'
import { packageRoot } from '../lib/paths.js'
import { join } from 'node:path'

const readme = readFileSync(join(packageRoot, 'README.md'), 'utf8')

t.equal(withOptionsTable(readme), readme, 'the configuration reference matches lib/options.ts (run `npm run docs`)')

t.test('files the README links exist', async (t) => {
  const links = [...readme.matchAll(/\]\(((?:lib|sql|examples|test|bin)\/[^)#]+)\)/g)].map((m) => m[1])
  t.ok(links.length > 0)
  for (const link of links) t.ok(existsSync(join(packageRoot, link)), link)
})

t.test('the README starts with what it is, then the start and test commands', async (t) => {
  t.match(readme, /npm install fastify-changefeed && npx fastify-changefeed --demo/)
  t.match(readme, /npm start -- --demo/)
  t.match(readme, /npm test/)
})
