/**
 * LDAP store entries for the store-map tests: what a directory holds for `count` stores of two
 * slots, the access rule that lets the service account fail a store over, and a failover's LDIF;
 * and a hold on an LDAP store-map source's polls.
 */
import type { StoreMapSource } from '../../src/routing/sources.js';
import { LDAP_SERVICE_DN, LDAP_STORES_DN } from './servers/index.js';

/** Stores st1…st`count`, each with slots sl<N>a (the master, IMAP 10143) and sl<N>b (IMAP 10144), as LDIF. */
export function storeEntries(count: number): string {
  const ldif: string[] = [];
  for (let s = 1; s <= count; s++) {
    ldif.push(`dn: cn=st${s},${LDAP_STORES_DN}`, 'objectClass: mailfrontStore', `cn: st${s}`, `mailfrontCurrentMaster: sl${s}a`, `mailfrontPreferredMaster: sl${s}a`, '');
    for (const x of ['a', 'b']) ldif.push(`dn: cn=sl${s}${x},cn=st${s},${LDAP_STORES_DN}`, 'objectClass: mailfrontSlot', `cn: sl${s}${x}`, 'mailfrontHost: 127.0.0.1', `mailfrontImapPort: ${x === 'a' ? 10143 : 10144}`, '');
  }
  return ldif.join('\n');
}

/** slapd access: the service account may write the masters of the store entries (a failover through mailfront). */
export const FAILOVER_ACCESS = [`access to dn.subtree="${LDAP_STORES_DN}" attrs=mailfrontCurrentMaster,mailfrontPreferredMaster by dn.exact="${LDAP_SERVICE_DN}" write by * break`];

/** The LDIF of another tool's failover of `store` to `slot`. */
export const failoverLdif = (store: string, slot: string): string => `dn: cn=${store},${LDAP_STORES_DN}\nchangetype: modify\nreplace: mailfrontCurrentMaster\nmailfrontCurrentMaster: ${slot}\n`;

/**
 * Holds back the polls of an LDAP store-map source (LdapStoreMapSource) until the function
 * returned is called: a poll under way waits before it asks the server whether anything changed,
 * so that it can neither read the map nor be what puts a change in force meanwhile.
 */
export function holdPolls(source: StoreMapSource): () => void {
  const polls = source as unknown as { unchanged: () => Promise<boolean> };
  const unchanged = polls.unchanged.bind(polls);
  let release = (): void => undefined;
  const gate = new Promise<void>((resolve) => (release = resolve));
  polls.unchanged = async () => {
    await gate;
    return unchanged();
  };
  return release;
}
