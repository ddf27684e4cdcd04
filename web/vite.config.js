// Builds the review app into the Python package (served by radloop at /review/app/ and
// /review/static/), so that `pip install radloop` needs no Node. Run `npm ci && npm run build`.
import { fileURLToPath } from 'node:url'
import { defineConfig } from 'vite'

// NiiVue computes a gradient texture (the lighting of 3D volume rendering) whenever the
// background volume changes. The review app never shows a 3D rendering, and without a GPU
// (software WebGL, e.g. SwiftShader in CI) that pass costs seconds before the first image. This
// transform skips it when `nv.opts.skipGradient` is true; the build fails if NiiVue's code no
// longer has the expected shape (review this patch on every NiiVue upgrade).
const GRADIENT_CALL = 'this.volumeTexture = outTexture;\n      this.gradientTexture = gradientGL({'

function skipNiivueGradient() {
  return {
    name: 'radloop-skip-niivue-gradient',
    transform(code, id) {
      if (!id.replaceAll('\\', '/').endsWith('@niivue/niivue/build/niivue/index.js')) return null
      if (code.split(GRADIENT_CALL).length !== 2) {
        this.error('NiiVue changed: the gradientGL call in refreshLayers was not found exactly once')
      }
      return code.replace(
        GRADIENT_CALL,
        'this.volumeTexture = outTexture;\n      if (!this.opts.skipGradient) this.gradientTexture = gradientGL({',
      )
    },
  }
}

export default defineConfig({
  base: '/review/static/',
  plugins: [skipNiivueGradient()],
  build: {
    outDir: fileURLToPath(new URL('../src/radloop/viewer_launch/static', import.meta.url)),
    emptyOutDir: true,
    target: 'es2022',
    sourcemap: false,
    chunkSizeWarningLimit: 6000,
  },
  optimizeDeps: { exclude: ['@niivue/dicom-loader'] },
  worker: { format: 'es' },
})
