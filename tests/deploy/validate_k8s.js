// Validates Kubernetes manifests against the official schemas (kubernetes-models): every document of every file, by apiVersion and kind.
//
//   node tests/deploy/validate_k8s.js deploy/k8s [more files or folders]
//
// Prints one JSON line per document ({file, index, apiVersion, kind, name}) and exits 0, or names each bad document on
// stderr and exits 1. Kustomization files (not API objects) are checked for resources that exist. kubernetes-models'
// schemas allow unknown fields, so a misspelt optional field passes here; tests/deploy/test_files.py checks the fields
// this project relies on by name.
'use strict';
const fs = require('fs');
const path = require('path');
const YAML = require('yaml');

// apiVersion "apps/v1" -> kubernetes-models/apps/v1; the core group "v1" -> kubernetes-models/v1.
function modelClass(apiVersion, kind) {
  if (typeof apiVersion !== 'string' || typeof kind !== 'string') throw new Error('apiVersion and kind must be strings');
  if (!/^([a-z0-9.-]+\/)?v[0-9]+((alpha|beta)[0-9]+)?$/.test(apiVersion)) throw new Error(`bad apiVersion ${apiVersion}`);
  let mod;
  try {
    mod = require(`kubernetes-models/${apiVersion}`);
  } catch (e) {
    throw new Error(`unknown apiVersion ${apiVersion}`);
  }
  if (typeof mod[kind] !== 'function') throw new Error(`unknown kind ${kind} in ${apiVersion}`);
  return mod[kind];
}

function checkKustomization(file, doc) {
  const dir = path.dirname(file);
  for (const r of doc.resources || []) {
    const p = path.join(dir, r);
    const ok = fs.existsSync(p) &&
      (fs.statSync(p).isFile() || fs.existsSync(path.join(p, 'kustomization.yaml')));
    if (!ok) throw new Error(`resource ${r} does not exist (a file, or a folder with a kustomization.yaml)`);
  }
}

function yamlFiles(p) {
  if (fs.statSync(p).isFile()) return [p];
  return fs.readdirSync(p).sort().flatMap((n) => {
    const q = path.join(p, n);
    return fs.statSync(q).isDirectory() ? yamlFiles(q) : /\.ya?ml$/.test(n) ? [q] : [];
  });
}

function main(args) {
  if (args.length === 0) {
    console.error('usage: validate_k8s.js FILE_OR_FOLDER...');
    return 2;
  }
  let bad = 0;
  let count = 0;
  for (const file of args.flatMap(yamlFiles)) {
    const docs = YAML.parseAllDocuments(fs.readFileSync(file, 'utf8'));
    docs.forEach((d, index) => {
      const where = `${file} document ${index}`;
      try {
        if (d.errors.length) throw new Error(d.errors.map((e) => e.message).join('; '));
        const obj = d.toJS();
        if (obj === null || obj === undefined) return; // an empty document (a trailing ---)
        if (obj.apiVersion && obj.apiVersion.startsWith('kustomize.config.k8s.io/')) {
          checkKustomization(file, obj);
        } else {
          const Model = modelClass(obj.apiVersion, obj.kind);
          if (!obj.metadata || !obj.metadata.name) throw new Error('metadata.name is missing');
          new Model(obj).validate();
        }
        count++;
        console.log(JSON.stringify({file, index, apiVersion: obj.apiVersion, kind: obj.kind,
          name: obj.metadata ? obj.metadata.name : null}));
      } catch (e) {
        bad++;
        console.error(`${where}: ${e.message}`);
      }
    });
  }
  if (count === 0 && bad === 0) {
    console.error('no documents found');
    return 1;
  }
  return bad ? 1 : 0;
}

process.exitCode = main(process.argv.slice(2));
