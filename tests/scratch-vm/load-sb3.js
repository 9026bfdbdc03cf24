// Loads an .sb3 file with Scratch's own VM, headless (no renderer, no audio engine), and
// reports what every costume and sound was loaded from.
//
//   node load-sb3.js PATH.sb3
//
// The VM gets a storage that serves nothing: every asset must come out of the bundle itself,
// found under the entry name scratch-vm looks up (a costume by `<assetId>.<dataFormat>`, a
// sound by its `md5ext`, both case-sensitive). Every name the VM looks up in the bundle is
// recorded with whether it was there (`lookups`); every asset it then asks the storage for
// instead is recorded too (`storageLoads`).
//
// Prints one line `ATELIER_RESULT <json>` (the VM logs on stdout too) and exits 0; a project the
// VM refuses to load exits 1 with the error, and what it looked for, on stderr. Without a
// renderer an asset missing from the bundle makes the VM fail: its fallback costume needs one.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

// The package's Node bundle (dist/node) cannot load in 15.1.1: the jsdom bundled into it reads
// its default stylesheet from a path beside the bundle that the package does not ship. The VM's
// own sources (published with it) load fine.
const vmSrc = path.join(__dirname, 'node_modules', '@scratch', 'scratch-vm', 'src');
const {ScratchStorage} = require('@scratch/scratch-storage');
// The JSZip the VM opens the bundle with (resolved from the VM's own directory).
const JSZip = require(require.resolve('jszip', {paths: [vmSrc]}));

const lookups = [];
const loads = [];

// Records the names the VM's asset readers look up. They call `zip.file(name)` synchronously
// on entry, so a flag raised for the duration of the call tells their lookups apart from
// JSZip's own (it looks names up while it opens the file).
let inAssetReader = false;
const lookUp = JSZip.prototype.file;
JSZip.prototype.file = function (name, ...rest) {
    const found = lookUp.call(this, name, ...rest);
    // A RegExp is the VM's fallback after an exact miss: the exact miss is what counts.
    if (inAssetReader && typeof name === 'string' && rest.length === 0) {
        lookups.push({name, found: Boolean(found)});
    }
    return found;
};
// Patched before the VM is loaded: its serializer takes these functions when it is required.
const readers = require(path.join(vmSrc, 'serialization', 'deserialize-assets.js'));
for (const fn of ['deserializeCostume', 'deserializeSound']) {
    const original = readers[fn];
    readers[fn] = function (...args) {
        inAssetReader = true;
        try {
            return original.apply(this, args);
        } finally {
            inAssetReader = false;
        }
    };
}
const VirtualMachine = require(path.join(vmSrc, 'virtual-machine.js'));

const md5 = data => crypto.createHash('md5').update(data).digest('hex');

// A loaded costume or sound. The VM renames an asset by the md5 of the bytes it holds (for an
// SVG, of the bytes after its sanitizer rewrote them), in lower case.
const describe = item => ({
    name: item.name,
    md5ext: item.md5,
    assetId: item.assetId,
    dataFormat: item.dataFormat,
    assetFormat: item.asset ? item.asset.dataFormat : null,
    dataMd5: item.asset && item.asset.data ? md5(item.asset.data) : null,
    broken: Boolean(item.broken)
});

const main = async () => {
    const file = process.argv[2];
    if (!file) throw new Error('usage: node load-sb3.js PATH.sb3');
    const bytes = fs.readFileSync(file);

    const vm = new VirtualMachine();
    const storage = new ScratchStorage();
    // Serves nothing: no web store is registered, and even the built-in assets are withheld.
    storage.load = (assetType, assetId, dataFormat) => {
        loads.push(`${assetId}.${dataFormat}`);
        return Promise.resolve(null);
    };
    vm.attachStorage(storage);

    await vm.loadProject(bytes);

    const targets = vm.runtime.targets
        .filter(t => t.isOriginal)
        .map(t => ({
            name: t.getName(),
            isStage: t.isStage,
            costumes: t.getCostumes().map(describe),
            sounds: t.getSounds().map(describe)
        }));
    process.stdout.write(`ATELIER_RESULT ${JSON.stringify({targets, lookups, storageLoads: loads})}\n`);
};

main().then(
    () => process.exit(0),
    e => {
        process.stderr.write(`scratch-vm could not load the project: ${e && e.stack ? e.stack : e}\n` +
            `looked up in the bundle: ${JSON.stringify(lookups)}\n` +
            `asked the storage for: ${JSON.stringify(loads)}\n`);
        process.exit(1);
    }
);
