import os.path as osp

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_requirements(name):
    path = osp.join(HERE, 'requirements', name)
    with open(path) as f:
        return [line.split('#')[0].strip() for line in f
                if line.split('#')[0].strip()]


def read_version():
    scope = {}
    with open(osp.join(HERE, 'dino_mm', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


tests = read_requirements('tests.txt')
optional = read_requirements('optional.txt')

setup(
    name='dino_mm',
    version=read_version(),
    description='DINOv2 / DINOv3 self-supervised vision models for the OpenMMLab ecosystem',
    long_description=open(osp.join(HERE, 'README.md')).read() if osp.exists(osp.join(HERE, 'README.md')) else '',
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=find_packages(include=['dino_mm', 'dino_mm.*']),
    include_package_data=True,
    # mmcv (with ops) is deliberately not listed: it is compiled by tools/setup_env.sh.
    install_requires=read_requirements('runtime.txt'),
    extras_require={
        'tests': tests,
        'xformers': ['xformers'],
        'optional': optional,
        'full': tests + optional + ['xformers'],
    },
    classifiers=[
        'License :: OSI Approved :: Apache Software License',
        'Programming Language :: Python :: 3.11',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
