// The real-server test harness: private slapd, Dovecot and Cyrus instances on free loopback ports,
// each in its own temp dir, stopped by the PID we started. See docs in each module.
export * from './certs.js';
export * from './cyrus.js';
export * from './dovecot.js';
export * from './ds389.js';
export * from './haproxy.js';
export * from './lineclient.js';
export * from './ports.js';
export * from './process.js';
export * from './redis.js';
export * from './slapd.js';
export * from './tmp.js';
