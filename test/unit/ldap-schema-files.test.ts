// The schema mailfront ships comes in three forms (config/ldap/): mailfront.schema for slapd.conf,
// mailfront.ldif for OpenLDAP's cn=config, mailfront-389ds.ldif for 389 DS. They must define the
// same attribute types and object classes, in the same words, so that none drifts from the others.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

const CONFIG_DIR = join(dirname(fileURLToPath(import.meta.url)), '../../../config/ldap');

interface Definitions {
  readonly attributeTypes: string[];
  readonly objectClasses: string[];
}

/** A definition with its runs of white space made one space. */
function normalized(definition: string): string {
  return definition.replace(/\s+/g, ' ').trim();
}

/** The definitions of a slapd.conf schema file: `attributetype ( ... )` and `objectclass ( ... )`, each up to its balanced parenthesis. */
function schemaFileDefinitions(text: string): Definitions {
  const body = text
    .split('\n')
    .filter((line) => !line.trimStart().startsWith('#'))
    .join('\n');
  const found: Definitions = { attributeTypes: [], objectClasses: [] };
  const keyword = /^(attributetype|objectclass)\s+/gim;
  for (let match = keyword.exec(body); match !== null; match = keyword.exec(body)) {
    let depth = 0;
    let end = match.index + match[0].length;
    assert.equal(body[end], '(', `a definition begins with "(" after ${match[1]}`);
    do {
      if (body[end] === '(') depth++;
      else if (body[end] === ')') depth--;
      end++;
    } while (depth > 0 && end < body.length);
    const definition = normalized(body.slice(match.index + match[0].length, end));
    (match[1]!.toLowerCase() === 'attributetype' ? found.attributeTypes : found.objectClasses).push(definition);
  }
  return found;
}

/** One LDIF entry's attributes (RFC 2849: comment lines dropped, continuation lines unfolded), in order. */
function ldifAttributes(text: string): Array<[string, string]> {
  const lines = text.split('\n').filter((line) => !line.startsWith('#'));
  const unfolded: string[] = [];
  for (const line of lines) {
    if (line.startsWith(' ') && unfolded.length > 0) unfolded[unfolded.length - 1] += line.slice(1);
    else if (line !== '') unfolded.push(line);
  }
  return unfolded.map((line) => {
    const colon = line.indexOf(': ');
    assert.ok(colon > 0, `an LDIF line "attribute: value": ${line}`);
    return [line.slice(0, colon), line.slice(colon + 2)];
  });
}

function ldifDefinitions(attributes: Array<[string, string]>, attributeType: string, objectClass: string): Definitions {
  return {
    attributeTypes: attributes.filter(([name]) => name === attributeType).map(([, value]) => normalized(value)),
    objectClasses: attributes.filter(([name]) => name === objectClass).map(([, value]) => normalized(value)),
  };
}

const schema = schemaFileDefinitions(readFileSync(join(CONFIG_DIR, 'mailfront.schema'), 'utf8'));

test('mailfront.schema defines the attribute types and object classes mailfront reads and writes', () => {
  const names = (definitions: string[]): string[] => definitions.map((d) => /NAME '([^']+)'/.exec(d)?.[1] ?? d);
  assert.deepEqual(names(schema.attributeTypes), ['mailStore', 'mailfrontCurrentMaster', 'mailfrontPreferredMaster', 'mailfrontHost', 'mailfrontImapPort', 'mailfrontImapsPort', 'mailfrontPop3Port', 'mailfrontPop3sPort', 'mailfrontSievePort', 'mailfrontBackendProfile', 'mailfrontMaintenance', 'mailfrontHold']);
  assert.deepEqual(names(schema.objectClasses), ['mailfrontUser', 'mailfrontStore', 'mailfrontSlot']);
});

test('mailfront.ldif (OpenLDAP cn=config) is one olcSchemaConfig entry with the same definitions as mailfront.schema', () => {
  const attributes = ldifAttributes(readFileSync(join(CONFIG_DIR, 'mailfront.ldif'), 'utf8'));
  assert.deepEqual(attributes.slice(0, 3), [
    ['dn', 'cn=mailfront,cn=schema,cn=config'],
    ['objectClass', 'olcSchemaConfig'],
    ['cn', 'mailfront'],
  ]);
  assert.equal(attributes.length, 3 + schema.attributeTypes.length + schema.objectClasses.length, 'nothing else in the entry');
  assert.deepEqual(ldifDefinitions(attributes, 'olcAttributeTypes', 'olcObjectClasses'), schema);
});

test('mailfront-389ds.ldif (389 DS cn=schema) has the same definitions as mailfront.schema', () => {
  const attributes = ldifAttributes(readFileSync(join(CONFIG_DIR, 'mailfront-389ds.ldif'), 'utf8'));
  assert.deepEqual(attributes[0], ['dn', 'cn=schema']);
  assert.equal(attributes.length, 1 + schema.attributeTypes.length + schema.objectClasses.length, 'nothing else in the entry');
  assert.deepEqual(ldifDefinitions(attributes, 'attributeTypes', 'objectClasses'), schema);
});
