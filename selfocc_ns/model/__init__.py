"""The SelfOcc model: image encoder, TPV lifting, SDF field, renderer, losses."""
