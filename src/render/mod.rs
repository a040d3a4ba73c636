//! Rendering sbatch scripts from Tera templates.
