import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The package's root folder, found from this file whether it runs from lib/ (tests) or dist/lib/ (built). */
export const packageRoot: string = (() => {
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, 'package.json')) || !existsSync(join(dir, 'sql'))) {
    const parent = dirname(dir)
    if (parent === dir) throw new Error('fastify-changefeed: cannot find the package root (sql/ folder)')
    dir = parent
  }
  return dir
})()

/** This package's version, for telemetry. */
export const packageVersion: string = (JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')) as { version: string }).version
