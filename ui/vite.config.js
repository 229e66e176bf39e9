// MedStack web viewer: built into ui/dist, served by the gateway at /ui (gateway/ui.py).
import { defineConfig } from 'vite'

export default defineConfig({
  base: '/ui/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    sourcemap: false,
    chunkSizeWarningLimit: 4096,
    // no inline <script> or data: modules: the CSP has script-src 'self' only
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
  },
})
