/** The project's documents: the README and the reference beside the code it describes. */
import { readdirSync, readFileSync } from 'node:fs'
import { join, relative } from 'node:path'
import { packageRoot } from '../../lib/package.js'

const SKIP = new Set(['node_modules', 'dist', '.git', 'results', 'artifacts'])

function markdownUnder (dir: string): string[] {
  const found: string[] = []
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (SKIP.has(entry.name) || entry.name.startsWith('.')) continue
    const path = join(dir, entry.name)
    if (entry.isDirectory()) found.push(...markdownUnder(path))
    else if (entry.name.endsWith('.md')) found.push(relative(packageRoot, path))
  }
  return found
}

/** Every Markdown file of the project (paths relative to the package root), README.md first. */
export function documents (): string[] {
  const nested = ['lib', 'sql', 'bin', 'examples', 'test'].flatMap((dir) => markdownUnder(join(packageRoot, dir)))
  return ['README.md', ...nested.sort()]
}

export function readDocument (path: string): string {
  return readFileSync(join(packageRoot, path), 'utf8')
}

/** GitHub's anchor of a heading: lower case, punctuation other than '-' dropped, spaces as '-'. */
export function anchorOf (heading: string): string {
  return heading.trim().toLowerCase().replace(/[^\p{L}\p{N}\- _]/gu, '').replace(/ /g, '-')
}

export function anchorsOf (markdown: string): Set<string> {
  const withoutCode = markdown.replace(/^```[\s\S]*?^```/gm, '')
  return new Set([...withoutCode.matchAll(/^#{1,6} (.+)$/gm)].map((m) => anchorOf(m[1])))
}

/** The command lines of each `sh` block of a document, their comments (`  # …`) dropped. */
export function shellBlocks (markdown: string): string[][] {
  return [...markdown.matchAll(/^```sh\n([\s\S]*?)^```/gm)].map((block) => block[1].split('\n')
    .map((line) => line.replace(/\s+#\s.*$/, '').trim())
    .filter((line) => line !== '' && !line.startsWith('#')))
}
